"""Image-text contrastive learning (ITC): ALBEF's with momentum queue and distillation, CLIP / ALIGN's
in-batch form, and VLMo's second loss on the vision-language-expert features.

With a momentum teacher (``queue_size > 0`` or ``distill``), the columns of the similarity matrices
are the teacher's features of this batch followed by the queue of past teacher features (ALBEF);
otherwise they are the online features of this batch (CLIP / ALIGN). Targets are the columns with the
same image ``idx`` as the row (several captions of one image are all positives), optionally smoothed,
and with distillation mixed with the teacher's softmax (ALBEF §MoD).

Across several training processes, ``gather`` chooses what a rank contrasts against (see
:class:`ITCConfig`); the queue always receives every rank's teacher features, as ALBEF's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from vlkit import dist
from vlkit.core.errors import ConfigError
from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.ranges import MAX_ROWS, check_count, check_number, is_finite
from vlkit.core.similarity import Similarity
from vlkit.core.step import StepView
from vlkit.encoders.base import contrastive_feat
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.distill import DistillConfig, mix_targets, soft_cross_entropy
from vlkit.registry import register


@dataclass(kw_only=True)
class ITCConfig(ObjectiveConfig):
    """Contrastive objective.

    Attributes:
        temperature: initial temperature τ (logits = cosine / τ); 0.07 in ALBEF, VLMo and CLIP.
        learn_temperature: train τ.
        parametrization: ``temperature`` learns τ itself (ALBEF); ``log_scale`` learns log(1/τ)
            (CLIP, VLMo's ``logit_scale``).
        temperature_range: ``[min, max]`` τ is clamped to after every optimizer step (ALBEF
            pre-training: [0.001, 0.5]); null: no clamp (VLMo).
        queue_size: momentum-feature queue length (ALBEF: 65536); 0: none.
        distill: momentum distillation (ALBEF: alpha 0.4, ramped over the first epoch); null: none.
        label_smoothing: mass spread uniformly over all columns (ALIGN: 0.1).
        idx_targets: captions with the same image ``idx`` are positives of each other; false gives
            ALBEF pre-training's diagonal targets.
        vl_path: add VLMo's second loss on the vision-language-expert features (``vl_feat``, own
            temperature) and average the two (in-batch only).
        gather: the batch columns when training on several processes (one process: all the same):
            ``none``: this rank's batch (ALBEF: in-batch negatives are local; the queue holds every
            rank's teacher features). ``with_grad``: the global batch — each rank's rows against
            every rank's columns, the columns gathered with gradient (ALIGN, open_clip's local loss):
            the parameters' gradients equal one process's on the global batch. ``without_grad``: the
            global batch as VLMo computes it — every rank builds the whole ``[N, N]`` matrix, the
            other ranks' features are constants; after DDP's averaging the encoder's gradients are
            the global loss's divided by the world size (the temperature's is the global loss's),
            with no all-reduce of feature gradients. With a
            teacher, the batch columns are its (gradient-free) features of the global batch.
    """

    temperature: float = 0.07
    learn_temperature: bool = True
    parametrization: Literal["temperature", "log_scale"] = "temperature"
    temperature_range: list[float] | None = field(default_factory=lambda: [0.001, 0.5])
    queue_size: int = 0
    distill: DistillConfig | None = None
    label_smoothing: float = 0.0
    idx_targets: bool = True
    vl_path: bool = False
    gather: Literal["none", "with_grad", "without_grad"] = "none"

    provides_similarity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("temperature", self.temperature, 0, low_open=True)
        if self.temperature_range is not None:
            lo_hi = self.temperature_range
            if len(lo_hi) != 2 or not all(is_finite(t) for t in lo_hi) or not 0 < lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"must be [min, max] with 0 < min < max, got {lo_hi}", key="temperature_range")
        check_count("queue_size", self.queue_size, low=0, high=MAX_ROWS)
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        if self.vl_path and self.needs_teacher:
            raise ConfigError("the VL path is in-batch only: use it without queue_size and distill", key="vl_path")

    @property
    def needs_teacher(self) -> bool:
        return self.queue_size > 0 or self.distill is not None

    @property
    def needs_vl_path(self) -> bool:
        return self.vl_path


class Temperature(nn.Module):
    """A learnable temperature τ, stored as τ (``temp``) or as log(1/τ) (``logit_scale``)."""

    def __init__(self, init: float, *, learn: bool, parametrization: str, clamp: list[float] | None) -> None:
        super().__init__()
        self.log_scale = parametrization == "log_scale"
        value = math.log(1.0 / init) if self.log_scale else init
        self.value = nn.Parameter(torch.tensor(float(value)), requires_grad=learn)
        self.clamp = clamp

    def forward(self) -> Tensor:
        """τ as a 0-d tensor."""
        return torch.exp(-self.value) if self.log_scale else self.value

    def inverse(self) -> Tensor:
        """1/τ, the logit scale."""
        return torch.exp(self.value) if self.log_scale else 1.0 / self.value

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep τ in the configured range (called after the optimizer step)."""
        if self.clamp is None:
            return
        lo, hi = self.clamp
        if self.log_scale:
            self.value.clamp_(math.log(1.0 / hi), math.log(1.0 / lo))
        else:
            self.value.clamp_(lo, hi)


class FeatureQueue(nn.Module):
    """A ring buffer of past teacher features (ALBEF layout: ``image_queue``/``text_queue`` ``[E, Q]``,
    ``idx_queue`` ``[1, Q]``, ``queue_ptr`` ``[1]``). Any batch size enqueues (ragged last batches wrap
    around); the write position is mirrored as a Python int so enqueueing never reads the device."""

    image_queue: Tensor
    text_queue: Tensor
    idx_queue: Tensor
    queue_ptr: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("image_queue", nn.functional.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("text_queue", nn.functional.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("idx_queue", torch.full((1, size), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._ptr = 0
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_ptr())

    def _sync_ptr(self) -> None:
        self._ptr = int(self.queue_ptr[0])  # once, at load time

    @torch.no_grad()
    def enqueue(self, image_feat: Tensor, text_feat: Tensor, idx: Tensor) -> None:
        """Write ``[n, E]`` features and ``[n]`` ids at the pointer, wrapping around."""
        n = image_feat.shape[0]
        if n >= self.size:
            image_feat, text_feat, idx, n = image_feat[-self.size:], text_feat[-self.size:], idx[-self.size:], self.size
        first = min(n, self.size - self._ptr)
        for start, stop, lo, hi in ((self._ptr, self._ptr + first, 0, first), (0, n - first, first, n)):
            if stop > start:
                self.image_queue[:, start:stop] = image_feat[lo:hi].T
                self.text_queue[:, start:stop] = text_feat[lo:hi].T
                self.idx_queue[0, start:stop] = idx[lo:hi]
        self._ptr = (self._ptr + n) % self.size
        self.queue_ptr.fill_(self._ptr)


@dataclass
class ContrastiveLogits:
    """One direction pair of contrastive logits and their targets, ``[R, C]`` each.

    Rows are this rank's ``B`` samples (``R = B``) or, with ``gather: without_grad``, the global
    batch's. Columns are the batch's (this rank's or the global batch's) followed by the queue.

    Attributes:
        row_start: row of this rank's first sample.
        col_start: column of this rank's first sample.
        batch_cols: number of columns that belong to the batch (the rest are the queue).
    """

    i2t: Tensor
    t2i: Tensor
    targets_i2t: Tensor
    targets_t2i: Tensor
    row_start: int = 0
    col_start: int = 0
    batch_cols: int = 0


@dataclass
class _Sides:
    """Rows and batch columns of one contrastive matrix pair (``[R, E]``, ``[C, E]``) and their ids."""

    rows_img: Tensor
    rows_txt: Tensor
    cols_img: Tensor
    cols_txt: Tensor
    rows_idx: Tensor
    cols_idx: Tensor
    row_start: int
    col_start: int


def _gathered(step: StepView, key: str, tensor: Tensor, how: str) -> Tensor:
    """``tensor`` gathered over ranks (``no_grad``, ``with_grad`` or ``keep_local``), once per step."""
    gather = {"no_grad": dist.all_gather_no_grad, "with_grad": dist.all_gather_with_grad,
              "keep_local": dist.gather_keep_local}[how]
    return step.memo(f"gather:{how}:{key}", lambda: gather(tensor))


@register("objective", "itc")
class ITC(Objective):
    """Image-text contrastive loss (ALBEF ITC with queue and MoD; CLIP/ALIGN; VLMo's two paths)."""

    Config = ITCConfig

    def __init__(self, cfg: ITCConfig, name: str = "itc", *, embed_dim: int | None = None) -> None:
        super().__init__(cfg, name)
        self.cfg: ITCConfig = cfg
        self.temp = Temperature(cfg.temperature, learn=cfg.learn_temperature, parametrization=cfg.parametrization,
                                clamp=cfg.temperature_range)
        self.vl_temp = (Temperature(cfg.temperature, learn=cfg.learn_temperature, parametrization=cfg.parametrization,
                                    clamp=cfg.temperature_range) if cfg.vl_path else None)
        self.queue = None
        if cfg.queue_size > 0:
            if embed_dim is None:
                raise ValueError("an ITC queue needs the width of the contrastive features (embed_dim)")
            self.queue = FeatureQueue(embed_dim, cfg.queue_size)

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> ITC:
        assert isinstance(cfg, ITCConfig)
        return cls(cfg, name, embed_dim=parts.encoder.embed_dim)

    def _targets(self, idx: Tensor, idx_cols: Tensor, diagonal: int = 0) -> Tensor:
        """``[R, C]`` targets: same-``idx`` columns, or (``idx_targets: false``) row ``i``'s own
        column ``diagonal + i``."""
        b = idx.shape[0]
        if self.cfg.idx_targets:
            positive = (idx[:, None] == idx_cols[None, :]).float()
        else:
            positive = torch.zeros(b, idx_cols.shape[0], device=idx.device)
            positive[:, diagonal:diagonal + b].fill_diagonal_(1.0)
        targets = positive / positive.sum(1, keepdim=True)
        eps = self.cfg.label_smoothing
        return targets if eps == 0 else (1 - eps) * targets + eps / targets.shape[1]

    def logits(self, step: StepView) -> ContrastiveLogits:
        """The main path's logits and (distillation-mixed) targets, computed once per step."""
        return step.memo(f"{self.name}:logits", lambda: self._logits(step))

    def _mode(self) -> str:
        return self.cfg.gather if dist.is_distributed() else "none"

    def _sides(self, step: StepView, img: Tensor, txt: Tensor, name: str, teacher: bool) -> _Sides:
        """Rows and batch columns for features ``img``/``txt`` ``[B, E]`` (``teacher``: the columns are
        the teacher's features of the batch, no gradient)."""
        mode, idx, b = self._mode(), step.batch.idx, step.batch.size
        if mode == "none":
            cols_img, cols_txt = ((contrastive_feat(step.teacher.image), contrastive_feat(step.teacher.text))
                                  if teacher else (img, txt))
            return _Sides(img, txt, cols_img, cols_txt, idx, idx, 0, 0)
        start = dist.offset(b)
        all_idx = _gathered(step, "idx", idx, "no_grad")
        if mode == "without_grad":
            rows_img = _gathered(step, f"{name}.image", img, "keep_local")
            rows_txt = _gathered(step, f"{name}.text", txt, "keep_local")
            rows_idx, row_start = all_idx, start
        else:
            rows_img, rows_txt, rows_idx, row_start = img, txt, idx, 0
        if teacher:
            cols_img = _gathered(step, "teacher.image", contrastive_feat(step.teacher.image), "no_grad")
            cols_txt = _gathered(step, "teacher.text", contrastive_feat(step.teacher.text), "no_grad")
        elif mode == "without_grad":
            cols_img, cols_txt = rows_img, rows_txt
        else:
            cols_img = _gathered(step, f"{name}.image", img, "with_grad")
            cols_txt = _gathered(step, f"{name}.text", txt, "with_grad")
        return _Sides(rows_img, rows_txt, cols_img, cols_txt, rows_idx, all_idx, row_start, start)

    def _logits(self, step: StepView) -> ContrastiveLogits:
        scale = self.temp.inverse()
        teacher_on = self.cfg.needs_teacher and step.teacher_ready
        sides = self._sides(step, contrastive_feat(step.image), contrastive_feat(step.text), "feat", teacher_on)
        diagonal = sides.col_start - sides.row_start
        batch_cols = sides.cols_img.shape[0]
        img_cols, txt_cols, idx_cols = sides.cols_img, sides.cols_txt, sides.cols_idx
        if not teacher_on:  # in-batch, online columns (CLIP / ALIGN / VLMo)
            targets = self._targets(sides.rows_idx, idx_cols, diagonal)
            return ContrastiveLogits(scale * sides.rows_img @ txt_cols.T, scale * sides.rows_txt @ img_cols.T,
                                     targets, targets, sides.row_start, sides.col_start, batch_cols)
        if self.queue is not None:
            img_cols = torch.cat((img_cols, self.queue.image_queue.T.to(img_cols.dtype)))
            txt_cols = torch.cat((txt_cols, self.queue.text_queue.T.to(txt_cols.dtype)))
            idx_cols = torch.cat((idx_cols, self.queue.idx_queue[0]))
        targets = self._targets(sides.rows_idx, idx_cols, diagonal)
        targets_i2t = targets_t2i = targets
        if self.cfg.distill is not None:
            alpha = self.cfg.distill.alpha_at(step.teacher_steps)
            img_m, txt_m = contrastive_feat(step.teacher.image), contrastive_feat(step.teacher.text)
            if self._mode() == "without_grad":  # rows: the global batch; the teacher's rows likewise
                img_m, txt_m = sides.cols_img[:batch_cols], sides.cols_txt[:batch_cols]
            with torch.no_grad():
                scale_m = scale.detach()
                targets_i2t = mix_targets(targets, scale_m * img_m @ txt_cols.T, alpha)
                targets_t2i = mix_targets(targets, scale_m * txt_m @ img_cols.T, alpha)
        return ContrastiveLogits(scale * sides.rows_img @ txt_cols.T, scale * sides.rows_txt @ img_cols.T,
                                 targets_i2t, targets_t2i, sides.row_start, sides.col_start, batch_cols)

    def in_batch_similarity(self, step: StepView) -> Similarity:
        """This rank's block of the logits (rows: this rank's samples; columns: their texts / images)."""
        logits = self.logits(step)
        b = step.batch.size
        rows, cols = slice(logits.row_start, logits.row_start + b), slice(logits.col_start, logits.col_start + b)
        return Similarity(i2t=logits.i2t[rows, cols].detach(), t2i=logits.t2i[rows, cols].detach())

    @torch.no_grad()
    def global_similarity(self, step: StepView) -> Similarity:
        """This rank's samples against the global batch, ``[B, N]`` (columns in rank order): the
        logits' batch block when they span the global batch, else the same columns gathered."""
        logits = self.logits(step)
        b = step.batch.size
        rows = slice(logits.row_start, logits.row_start + b)
        if self._mode() != "none" or not dist.is_distributed():
            return Similarity(i2t=logits.i2t[rows, :logits.batch_cols].detach(),
                              t2i=logits.t2i[rows, :logits.batch_cols].detach())
        teacher_on = self.cfg.needs_teacher and step.teacher_ready
        cols_img, cols_txt = ((contrastive_feat(step.teacher.image), contrastive_feat(step.teacher.text))
                              if teacher_on else (contrastive_feat(step.image), contrastive_feat(step.text)))
        cols_img = _gathered(step, "teacher.image" if teacher_on else "feat.image.nograd", cols_img, "no_grad")
        cols_txt = _gathered(step, "teacher.text" if teacher_on else "feat.text.nograd", cols_txt, "no_grad")
        scale = self.temp.inverse().detach()
        return Similarity(i2t=scale * contrastive_feat(step.image).detach() @ cols_txt.T,
                          t2i=scale * contrastive_feat(step.text).detach() @ cols_img.T)

    def forward(self, step: StepView) -> ObjectiveOutput:
        out = self.logits(step)
        loss = (soft_cross_entropy(out.i2t, out.targets_i2t) + soft_cross_entropy(out.t2i, out.targets_t2i)) / 2
        metrics: dict[str, Tensor] = {"temperature": self.temp().detach(), "loss_main": loss.detach()}
        if self.vl_temp is not None:
            loss_vl = self._vl_loss(step, self.vl_temp)
            metrics.update(loss_vl=loss_vl.detach(), temperature_vl=self.vl_temp().detach())
            loss = (loss + loss_vl) / 2
        if self.queue is not None:  # computed inside the forward (FSDP gathers parameters only there)
            self._queue_entries(step)
        b = step.batch.size
        mine = out.i2t[out.row_start:out.row_start + b, :out.batch_cols]
        hits = mine.argmax(1) == out.col_start + torch.arange(b, device=mine.device)
        metrics["acc_i2t"] = hits.float().mean().detach()
        schedule = {} if self.cfg.distill is None else {"alpha": self.cfg.distill.alpha_at(step.teacher_steps)}
        return ObjectiveOutput(loss=loss, metrics=metrics, schedule=schedule)

    def _vl_loss(self, step: StepView, vl_temp: Temperature) -> Tensor:
        img, txt = step.image.vl_feat, step.text.vl_feat
        if img is None or txt is None:
            raise RuntimeError("itc.vl_path needs an encoder with vision-language experts (mome with vl_start < depth)")
        scale = vl_temp.inverse()
        sides = self._sides(step, img, txt, "vl_feat", teacher=False)
        targets = self._targets(sides.rows_idx, sides.cols_idx, sides.col_start - sides.row_start)
        return (soft_cross_entropy(scale * sides.rows_img @ sides.cols_txt.T, targets)
                + soft_cross_entropy(scale * sides.rows_txt @ sides.cols_img.T, targets)) / 2

    @torch.no_grad()
    def after_step(self, step: StepView) -> None:
        """Clamp the temperatures; enqueue this step's teacher features."""
        self.temp.clamp_()
        if self.vl_temp is not None:
            self.vl_temp.clamp_()
        if self.queue is not None:  # filled from step 0 with every rank's features, read once the teacher is consulted
            self.queue.enqueue(*self._queue_entries(step))

    def _queue_entries(self, step: StepView) -> tuple[Tensor, Tensor, Tensor]:
        """Every rank's teacher image and text features ``[N, E]`` (fp32) and ids ``[N]`` of this step."""
        teacher = step.teacher
        return (_gathered(step, "teacher.image", contrastive_feat(teacher.image), "no_grad").float(),
                _gathered(step, "teacher.text", contrastive_feat(teacher.text), "no_grad").float(),
                _gathered(step, "idx", step.batch.idx, "no_grad"))
