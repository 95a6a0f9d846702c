"""The concrete training step: lazily computed, memoized encodings every objective of one step shares.

A :class:`Step` implements :class:`~vlkit.core.step.StepView` over what it is given: an encoder, the
batch, the similarity provider the model chose at build time (the objective whose config declares
``provides_similarity``) and the momentum teacher. Each encoding runs at most once per step however many
objectives read it; fusion passes reuse the image-side keys/values (``image_kv``). The teacher's view
(:attr:`Step.teacher`) is the same class over the teacher's encoder, computed without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from vlkit.core.batch import HARD_NEGATIVES, Batch, HardNegativeText, MaskedTokens
from vlkit.core.encodings import FusedEncoding, ImageEncoding, ImageKV, PatchMask, TextEncoding
from vlkit.core.similarity import Similarity
from vlkit.core.step import Memo, SimilarityProvider, StepView
from vlkit.encoders.base import Encoder
from vlkit.models.momentum import MomentumTeacher

T = TypeVar("T")


class Step(Memo):
    """Everything one training step shares (see the module docstring).

    Args:
        encoder: the encoder this view encodes with (the online one, or the teacher's copy).
        batch: the batch, on the encoder's device.
        index: 0-based global step (drives ramps such as the distillation ``alpha``).
        similarity: the objective that defines ``sim`` / ``global_sim`` (None: none in the recipe).
        teacher: the momentum teacher (None: none in the recipe).
        grad: compute with gradients (False for the teacher's view).
        modules: the teacher's copies of objective modules by dotted name (teacher view only).
    """

    def __init__(self, encoder: Encoder, batch: Batch, index: int, *, similarity: SimilarityProvider | None = None,
                 teacher: MomentumTeacher | None = None, grad: bool = True,
                 modules: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self._batch = batch
        self._index = index
        self._similarity = similarity
        self._teacher = teacher
        self._grad = grad
        self._modules = modules or {}

    @property
    def batch(self) -> Batch:
        return self._batch

    @property
    def index(self) -> int:
        return self._index

    def _compute(self, compute: Callable[[], T]) -> T:
        if self._grad:
            return compute()
        with torch.no_grad(), torch.profiler.record_function("teacher"):
            return compute()

    def _once(self, key: str, compute: Callable[[], T]) -> T:
        return self.memo(key, lambda: self._compute(compute))

    def _images(self) -> Tensor:
        if self._batch.images is None:
            raise RuntimeError("this objective needs images; this batch has none (a text-only batch)")
        return self._batch.images

    def _texts(self) -> tuple[Tensor, Tensor]:
        b = self._batch
        if b.input_ids is None or b.attention_mask is None:
            raise RuntimeError("this objective needs text; this batch has none (an image-only batch)")
        return b.input_ids, b.attention_mask

    def _masked(self) -> MaskedTokens:
        if self._batch.mlm is None:
            raise RuntimeError("this batch has no masked text: the MLM objective's masking did not run in the loader")
        return self._batch.mlm

    # ------------------------------------------------------------------ encodings
    @property
    def image(self) -> ImageEncoding:
        """Image encoding (once per step)."""
        return self._once("image", lambda: self.encoder.encode_image(self._images()))

    @property
    def text(self) -> TextEncoding:
        """Text encoding (once per step)."""
        ids, mask = self._texts()
        return self._once("text", lambda: self.encoder.encode_text(ids, mask, lengths=self._batch.text_lengths))

    @property
    def image_kv(self) -> ImageKV:
        """Image-side state shared by every fusion pass over this batch's images (ALBEF: per-layer K/V)."""
        return self._once("image_kv", lambda: self.encoder.image_kv(self.image))

    @property
    def masked_text(self) -> TextEncoding:
        """The MLM-corrupted text, encoded only as far as fusion needs (once per step)."""
        mlm, (_, mask) = self._masked(), self._texts()
        return self._once("masked_text", lambda: self.encoder.encode_text(
            mlm.input_ids, mask, unimodal=False, lengths=self._batch.text_lengths))

    @property
    def masked_text_alone(self) -> TextEncoding:
        """The MLM-corrupted text encoded on its own, no image (text-only MLM; once per step)."""
        mlm, (_, mask) = self._masked(), self._texts()
        return self._once("masked_text_alone", lambda: self.encoder.encode_text(
            mlm.input_ids, mask, lengths=self._batch.text_lengths))

    @property
    def hard_negative_text(self) -> TextEncoding:
        """The batch's annotated hard-negative captions (one per row, ``Batch.extras["hard_negatives"]``),
        encoded once per step."""
        negatives: HardNegativeText | None = self._batch.extras.get(HARD_NEGATIVES)
        if negatives is None:
            raise RuntimeError("this batch carries no hard-negative captions; the data loader adds them when an "
                               "objective asks for them (HardNegativesRequest)")
        return self._once("hard_negative_text", lambda: self.encoder.encode_text(
            negatives.input_ids, negatives.attention_mask, lengths=negatives.lengths))

    def masked_image(self, patch_mask: PatchMask) -> ImageEncoding:
        """The step's images with the patches ``patch_mask`` names hidden (not memoized: each mask differs)."""
        return self._compute(lambda: self.encoder.encode_image(self._images(), patch_mask=patch_mask))

    def encode_image(self, images: Tensor) -> ImageEncoding:
        """Other images ``[N, 3, H, W]`` encoded (not memoized)."""
        return self._compute(lambda: self.encoder.encode_image(images))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextEncoding:
        """Other texts ``[N, L]`` encoded (not memoized)."""
        return self._compute(lambda: self.encoder.encode_text(input_ids, attention_mask))

    # ------------------------------------------------------------------ fusion
    @property
    def fused(self) -> FusedEncoding:
        """The step's B (image b, caption b) pairs fused (once per step)."""
        return self.memo("fused", lambda: self.fuse())

    def fuse(self, *, image: ImageEncoding | None = None, text: TextEncoding | None = None,
             image_index: Tensor | None = None, text_index: Tensor | None = None) -> FusedEncoding:
        """Fuse ``image`` (default: the step's images, reusing :attr:`image_kv`) with ``text`` (default: the
        step's text), pairs chosen by the indices. Not memoized (each call fuses different pairs)."""
        def run() -> FusedEncoding:
            pairs_image = self.image if image is None else image
            pairs_text = self.text if text is None else text
            kv = self.image_kv if image is None else None
            return self.encoder.fuse(pairs_image, pairs_text, image_index=image_index, text_index=text_index,
                                     image_kv=kv)

        return self._compute(run)

    # ------------------------------------------------------------------ teacher
    @property
    def teacher(self) -> StepView:
        """The momentum teacher's view of the batch (no grad); an error if the model has no teacher."""
        teacher = self._teacher
        if teacher is None:
            raise RuntimeError("this objective needs the momentum teacher; set the recipe's `momentum` section")
        return self.memo("teacher", lambda: Step(teacher.encoder, self._batch, self._index, grad=False,
                                                 modules=teacher.modules_by_name))

    @property
    def teacher_steps(self) -> int:
        """Steps since objectives started consulting the teacher (negative: not yet, or no teacher)."""
        return -1 if self._teacher is None else self._index - self._teacher.cfg.warmup_steps

    @property
    def teacher_ready(self) -> bool:
        """Whether objectives should read the momentum teacher at this step."""
        return self.teacher_steps >= 0

    def module(self, name: str) -> nn.Module:
        """The teacher copy of an objective's module, e.g. ``"mlm.head"``."""
        if name not in self._modules:
            raise KeyError(f"the teacher holds no copy of `{name}`; it has {sorted(self._modules)}")
        return self._modules[name]

    # ------------------------------------------------------------------ similarities
    def _provider(self) -> SimilarityProvider:
        if self._similarity is None:
            raise RuntimeError("hard negatives need contrastive similarities: add an objective that provides them "
                               "(e.g. itc) or use `negatives: random`")
        return self._similarity

    @property
    def sim(self) -> Similarity:
        """In-batch contrastive logits, from the recipe's similarity provider (once per step)."""
        return self.memo("sim", lambda: self._provider().in_batch_similarity(self))

    @property
    def global_sim(self) -> Similarity:
        """This rank's samples against every rank's batch, ``[B, N]`` columns in rank order (in one
        process: :attr:`sim`), from the recipe's similarity provider (once per step)."""
        return self.memo("global_sim", lambda: self._provider().global_similarity(self))
