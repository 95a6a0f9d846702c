"""The step context: lazily computed, memoized encodings shared by every objective of one step.

Objectives ask the step for what they need (``step.image``, ``step.text``, ``step.teacher.text``,
``step.sim``, ``step.masked_text``, ``step.fuse(...)``) and never call an encoder themselves, so each
encoding runs at most once per step however many objectives read it. Fusion passes reuse the
image-side keys/values computed once (``step.image_kv``). The momentum teacher's encodings are
computed under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from vlkit.data.batch import Batch
from vlkit.data.hard_negatives import HARD_NEGATIVES, HardNegativeText
from vlkit.data.masking import MaskedTokens
from vlkit.encoders.base import Encoder, FusedEncoding, ImageEncoding, TextEncoding
from vlkit.nn.patch_mask import PatchMask

if TYPE_CHECKING:
    from vlkit.models.model import PretrainModel

T = TypeVar("T")


@dataclass
class Similarity:
    """In-batch contrastive logits (temperature applied) that hard-negative samplers read.

    Attributes:
        i2t: ``[B, C]`` image b against text j (``C = B`` in-batch, ``N`` over the global batch).
        t2i: ``[B, C]`` text b against image j.
    """

    i2t: Tensor
    t2i: Tensor


class _Memo:
    """A per-step cache: ``memo(key, fn)`` runs ``fn`` once per key."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]


class TeacherView(_Memo):
    """The momentum teacher's encodings of the batch (no grad), memoized like the student's.

    Args:
        encoder: the teacher's (EMA) encoder.
        modules: other teacher copies by name (e.g. ``"mlm.head"``).
        batch: the step's batch.
    """

    def __init__(self, encoder: Encoder, modules: dict[str, nn.Module], batch: Batch) -> None:
        super().__init__()
        self.encoder = encoder
        self.modules = modules
        self.batch = batch

    def _no_grad(self, compute: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            with torch.no_grad(), torch.profiler.record_function("teacher"):
                return compute()

        return run

    @property
    def image(self) -> ImageEncoding:
        return self.memo("image", self._no_grad(lambda: self.encoder.encode_image(self.batch.images)))

    @property
    def text(self) -> TextEncoding:
        b = self.batch
        return self.memo("text", self._no_grad(
            lambda: self.encoder.encode_text(b.input_ids, b.attention_mask, lengths=b.text_lengths)))

    @property
    def image_kv(self) -> Any:
        return self.memo("image_kv", self._no_grad(lambda: self.encoder.image_kv(self.image)))

    @property
    def masked_text(self) -> TextEncoding:
        mlm = _require_mlm(self.batch)
        b = self.batch
        return self.memo("masked_text", self._no_grad(
            lambda: self.encoder.encode_text(mlm.input_ids, b.attention_mask, unimodal=False,
                                                   lengths=b.text_lengths)))

    @property
    def masked_text_alone(self) -> TextEncoding:
        mlm = _require_mlm(self.batch)
        b = self.batch
        return self.memo("masked_text_alone", self._no_grad(
            lambda: self.encoder.encode_text(mlm.input_ids, b.attention_mask, lengths=b.text_lengths)))

    def fuse(self, *, text: TextEncoding | None = None, image_index: Tensor | None = None,
             text_index: Tensor | None = None) -> FusedEncoding:
        """Teacher fusion of its image encoding with ``text`` (default: its unmasked text), no grad."""
        with torch.no_grad():
            return self.encoder.fuse(self.image, text if text is not None else self.text,
                                     image_index=image_index, text_index=text_index, image_kv=self.image_kv)

    def module(self, name: str) -> nn.Module:
        """The teacher copy of an objective's module, e.g. ``"mlm.head"``."""
        if name not in self.modules:
            raise KeyError(f"the teacher holds no copy of `{name}`; it has {sorted(self.modules)}")
        return self.modules[name]


def _require_mlm(batch: Batch) -> MaskedTokens:
    if batch.mlm is None:
        raise RuntimeError("this batch has no masked text: the MLM objective's masker did not run in the loader")
    return batch.mlm


class Step(_Memo):
    """Everything one training step shares.

    Args:
        model: the model (encoder, objectives, optional momentum teacher).
        batch: the batch, on the model's device.
        index: 0-based global step (drives ramps such as the distillation ``alpha``).
    """

    def __init__(self, model: PretrainModel, batch: Batch, index: int) -> None:
        super().__init__()
        self.model = model
        self.batch = batch
        self.index = index

    @property
    def encoder(self) -> Encoder:
        return self.model.encoder

    @property
    def image(self) -> ImageEncoding:
        """Online image encoding (once per step)."""
        return self.memo("image", lambda: self.encoder.encode_image(self.batch.images))

    @property
    def text(self) -> TextEncoding:
        """Online text encoding (once per step)."""
        b = self.batch
        return self.memo("text", lambda: self.encoder.encode_text(b.input_ids, b.attention_mask,
                                                                  lengths=b.text_lengths))

    @property
    def image_kv(self) -> Any:
        """Image-side state shared by every fusion pass over this batch's images (ALBEF: per-layer K/V)."""
        return self.memo("image_kv", lambda: self.encoder.image_kv(self.image))

    @property
    def masked_text(self) -> TextEncoding:
        """The MLM-corrupted text, encoded only as far as fusion needs (once per step)."""
        mlm = _require_mlm(self.batch)
        b = self.batch
        return self.memo("masked_text",
                         lambda: self.encoder.encode_text(mlm.input_ids, b.attention_mask, unimodal=False,
                                                   lengths=b.text_lengths))

    @property
    def masked_text_alone(self) -> TextEncoding:
        """The MLM-corrupted text encoded on its own, no image (text-only MLM; once per step)."""
        mlm = _require_mlm(self.batch)
        b = self.batch
        return self.memo("masked_text_alone",
                         lambda: self.encoder.encode_text(mlm.input_ids, b.attention_mask, lengths=b.text_lengths))

    @property
    def hard_negative_text(self) -> TextEncoding:
        """The batch's annotated hard-negative captions (one per row, ``Batch.extras["hard_negatives"]``),
        encoded once per step."""
        negatives: HardNegativeText | None = self.batch.extras.get(HARD_NEGATIVES)
        if negatives is None:
            raise RuntimeError("this batch carries no hard-negative captions; the data loader adds them when an "
                               "objective reads them (PretrainCollate(hard_negatives=True))")
        return self.memo("hard_negative_text", lambda: self.encoder.encode_text(
            negatives.input_ids, negatives.attention_mask, lengths=negatives.lengths))

    def masked_image(self, patch_mask: PatchMask) -> ImageEncoding:
        """The step's images with the patches ``patch_mask`` names hidden (not memoized: each mask differs)."""
        if self.batch.images is None:
            raise RuntimeError("this batch has no images")
        return self.encoder.encode_image(self.batch.images, patch_mask=patch_mask)

    @property
    def teacher(self) -> TeacherView:
        """The momentum teacher's view of the batch; an error if the model has no teacher."""
        if self.model.teacher is None:
            raise RuntimeError("this objective needs the momentum teacher; set the recipe's `momentum` section")
        teacher = self.model.teacher
        return self.memo("teacher", lambda: TeacherView(teacher.encoder, teacher.modules_by_name, self.batch))

    @property
    def teacher_steps(self) -> int:
        """Steps since objectives started consulting the teacher (negative: not yet, or no teacher)."""
        teacher = self.model.teacher
        if teacher is None:
            return -1
        return self.index - teacher.cfg.warmup_steps

    @property
    def teacher_ready(self) -> bool:
        """Whether objectives should read the momentum teacher at this step."""
        return self.teacher_steps >= 0

    @property
    def sim(self) -> Similarity:
        """In-batch contrastive logits, from the recipe's contrastive objective (once per step)."""
        return self.memo("sim", lambda: self.model.similarity(self))

    @property
    def global_sim(self) -> Similarity:
        """This rank's samples against every rank's batch, ``[B, N]`` columns in rank order (in one
        process: :attr:`sim`), from the recipe's contrastive objective (once per step)."""
        return self.memo("global_sim", lambda: self.model.global_similarity(self))

    @property
    def fused(self) -> FusedEncoding:
        """The step's B (image b, caption b) pairs fused (once per step)."""
        return self.memo("fused", lambda: self.fuse())

    def fuse(self, *, text: TextEncoding | None = None, image_index: Tensor | None = None,
             text_index: Tensor | None = None) -> FusedEncoding:
        """Fuse the step's images with ``text`` (default: the step's text), pairs chosen by the indices.

        Not memoized (each call fuses different pairs) but it reuses :attr:`image_kv`.
        """
        return self.encoder.fuse(self.image, text if text is not None else self.text,
                                 image_index=image_index, text_index=text_index, image_kv=self.image_kv)
