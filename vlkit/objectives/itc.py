"""Image-text contrastive learning (ITC): ALBEF's with momentum queue and distillation, CLIP / ALIGN's
in-batch form, and VLMo's second loss on the vision-language-expert features.

With a momentum teacher (``queue_size > 0`` or ``distill``), the columns of the similarity matrices
are the teacher's features of this batch followed by the queue of past teacher features (ALBEF);
otherwise they are the online features of this batch (CLIP / ALIGN). Targets are the columns with the
same image ``idx`` as the row (several captions of one image are all positives), optionally smoothed,
and with distillation mixed with the teacher's softmax (ALBEF §MoD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput
from vlkit.objectives.distill import DistillConfig, mix_targets, soft_cross_entropy
from vlkit.objectives.step import Similarity, Step
from vlkit.registry import register
from vlkit.schema import ConfigError


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

    provides_similarity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("must be positive", key="temperature")
        if self.temperature_range is not None:
            lo_hi = self.temperature_range
            if len(lo_hi) != 2 or not 0 < lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"must be [min, max] with 0 < min < max, got {lo_hi}", key="temperature_range")
        if self.queue_size < 0:
            raise ConfigError("must be ≥ 0", key="queue_size")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("must be in [0, 1)", key="label_smoothing")
        if self.vl_path and self.needs_teacher:
            raise ConfigError("the VL path is in-batch only: use it without queue_size and distill", key="vl_path")

    @property
    def needs_teacher(self) -> bool:
        return self.queue_size > 0 or self.distill is not None


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
    """One direction pair of contrastive logits and their targets, ``[B, C]`` each."""

    i2t: Tensor
    t2i: Tensor
    targets_i2t: Tensor
    targets_t2i: Tensor


@register("objective", "itc")
class ITC(Objective):
    """Image-text contrastive loss (ALBEF ITC with queue and MoD; CLIP/ALIGN; VLMo's two paths)."""

    Config = ITCConfig

    def __init__(self, cfg: ITCConfig, name: str = "itc", ctx: ObjectiveContext | None = None) -> None:
        super().__init__(cfg, name, ctx)
        self.cfg: ITCConfig = cfg
        self.temp = Temperature(cfg.temperature, learn=cfg.learn_temperature, parametrization=cfg.parametrization,
                                clamp=cfg.temperature_range)
        self.vl_temp = (Temperature(cfg.temperature, learn=cfg.learn_temperature, parametrization=cfg.parametrization,
                                    clamp=cfg.temperature_range) if cfg.vl_path else None)
        self.queue = None
        if cfg.queue_size > 0:
            if ctx is None:
                raise ValueError("an ITC queue needs the encoder's feature width (pass ctx)")
            self.queue = FeatureQueue(ctx.encoder.embed_dim, cfg.queue_size)

    @property
    def needs_teacher(self) -> bool:
        return self.cfg.needs_teacher

    def _targets(self, idx: Tensor, idx_cols: Tensor) -> Tensor:
        b = idx.shape[0]
        if self.cfg.idx_targets:
            positive = (idx[:, None] == idx_cols[None, :]).float()
        else:
            positive = torch.zeros(b, idx_cols.shape[0], device=idx.device)
            positive[:, :b].fill_diagonal_(1.0)
        targets = positive / positive.sum(1, keepdim=True)
        eps = self.cfg.label_smoothing
        return targets if eps == 0 else (1 - eps) * targets + eps / targets.shape[1]

    def logits(self, step: Step) -> ContrastiveLogits:
        """The main path's logits and (distillation-mixed) targets, computed once per step."""
        return step.memo(f"{self.name}:logits", lambda: self._logits(step))

    def _logits(self, step: Step) -> ContrastiveLogits:
        img, txt, idx = step.image.feat, step.text.feat, step.batch.idx
        scale = self.temp.inverse()
        if not (self.cfg.needs_teacher and step.teacher_ready):  # in-batch, online columns (CLIP / ALIGN)
            i2t, t2i = scale * img @ txt.T, scale * txt @ img.T
            targets = self._targets(idx, idx)
            return ContrastiveLogits(i2t, t2i, targets, targets)
        teacher = step.teacher
        img_m, txt_m = teacher.image.feat, teacher.text.feat
        img_cols, txt_cols, idx_cols = img_m, txt_m, idx
        if self.queue is not None:
            img_cols = torch.cat((img_m, self.queue.image_queue.T.to(img_m.dtype)))
            txt_cols = torch.cat((txt_m, self.queue.text_queue.T.to(txt_m.dtype)))
            idx_cols = torch.cat((idx, self.queue.idx_queue[0]))
        targets = self._targets(idx, idx_cols)
        targets_i2t = targets_t2i = targets
        if self.cfg.distill is not None:
            alpha = self.cfg.distill.alpha_at(step.teacher_steps)
            with torch.no_grad():
                scale_m = scale.detach()
                targets_i2t = mix_targets(targets, scale_m * img_m @ txt_cols.T, alpha)
                targets_t2i = mix_targets(targets, scale_m * txt_m @ img_cols.T, alpha)
        return ContrastiveLogits(scale * img @ txt_cols.T, scale * txt @ img_cols.T, targets_i2t, targets_t2i)

    def in_batch_similarity(self, step: Step) -> Similarity:
        """The in-batch block of the logits (rows: this batch; columns: this batch's texts / images)."""
        logits = self.logits(step)
        b = step.batch.size
        return Similarity(i2t=logits.i2t[:, :b].detach(), t2i=logits.t2i[:, :b].detach())

    def forward(self, step: Step) -> ObjectiveOutput:
        out = self.logits(step)
        loss = (soft_cross_entropy(out.i2t, out.targets_i2t) + soft_cross_entropy(out.t2i, out.targets_t2i)) / 2
        metrics: dict[str, Any] = {"temperature": self.temp().detach(), "loss_main": loss.detach()}
        if self.vl_temp is not None:
            loss_vl = self._vl_loss(step)
            metrics.update(loss_vl=loss_vl.detach(), temperature_vl=self.vl_temp().detach())
            loss = (loss + loss_vl) / 2
        b = step.batch.size
        hits = out.i2t[:, :b].argmax(1) == torch.arange(b, device=out.i2t.device)
        metrics["acc_i2t"] = hits.float().mean().detach()
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def _vl_loss(self, step: Step) -> Tensor:
        img, txt = step.image.vl_feat, step.text.vl_feat
        if img is None or txt is None:
            raise RuntimeError("itc.vl_path needs an encoder with vision-language experts (mome with vl_start < depth)")
        scale = self.vl_temp.inverse()
        targets = self._targets(step.batch.idx, step.batch.idx)
        return (soft_cross_entropy(scale * img @ txt.T, targets) + soft_cross_entropy(scale * txt @ img.T, targets)) / 2

    @torch.no_grad()
    def after_step(self, step: Step) -> None:
        """Clamp the temperatures; enqueue this step's teacher features."""
        self.temp.clamp_()
        if self.vl_temp is not None:
            self.vl_temp.clamp_()
        if self.queue is not None:  # filled from step 0, read once the teacher is consulted
            teacher = step.teacher
            self.queue.enqueue(teacher.image.feat.float(), teacher.text.feat.float(), step.batch.idx)
