"""The step contract: what objectives and negative samplers may ask of one training step.

Objectives type against :class:`StepView`, never against the model or the concrete step class
(``vlkit.models.step.Step``), so a test or a plug-in author can fake a step with just the members an
objective reads (subclass :class:`Memo` for the per-step cache). Every encoding a view hands out is
computed at most once per step; the teacher's view has the same members, computed without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor, nn

from vlkit.core.batch import Batch
from vlkit.core.encodings import FusedEncoding, ImageEncoding, ImageKV, PatchMask, TextEncoding
from vlkit.core.similarity import Similarity

T = TypeVar("T")


class Memo:
    """A per-step cache: ``memo(key, compute)`` runs ``compute`` once per key and returns its value."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = compute()
        value: T = self._values[key]
        return value


class StepView(Protocol):
    """One training step as objectives see it (the online step, or the momentum teacher's view of it)."""

    @property
    def batch(self) -> Batch:
        """The step's batch, on the device."""
        ...

    @property
    def index(self) -> int:
        """0-based global step (drives ramps such as the distillation ``alpha``)."""
        ...

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Run ``compute`` once per step and key (objectives share derived tensors this way)."""
        ...

    @property
    def image(self) -> ImageEncoding:
        """The batch's images encoded (once per step)."""
        ...

    @property
    def text(self) -> TextEncoding:
        """The batch's captions encoded (once per step)."""
        ...

    @property
    def image_kv(self) -> ImageKV:
        """Image-side fusion state shared by every fusion pass over the batch's images (once per step)."""
        ...

    @property
    def masked_text(self) -> TextEncoding:
        """The MLM-corrupted text, encoded only as far as fusion needs (once per step)."""
        ...

    @property
    def masked_text_alone(self) -> TextEncoding:
        """The MLM-corrupted text encoded on its own, no image (text-only MLM; once per step)."""
        ...

    @property
    def hard_negative_text(self) -> TextEncoding:
        """The batch's annotated hard-negative captions, one per row, encoded (once per step)."""
        ...

    @property
    def fused(self) -> FusedEncoding:
        """The batch's ``B`` (image b, caption b) pairs fused (once per step)."""
        ...

    def fuse(self, *, image: ImageEncoding | None = None, text: TextEncoding | None = None,
             image_index: Tensor | None = None, text_index: Tensor | None = None) -> FusedEncoding:
        """Fuse pairs ``(image[image_index[i]], text[text_index[i]])``; ``image`` / ``text`` default to the
        step's own (then the image keys/values of :attr:`image_kv` are reused). Not memoized."""
        ...

    def masked_image(self, patch_mask: PatchMask) -> ImageEncoding:
        """The batch's images with the patches ``patch_mask`` names hidden (not memoized)."""
        ...

    def encode_image(self, images: Tensor) -> ImageEncoding:
        """Encode other images ``[N, 3, H, W]`` (e.g. negatives gathered from other ranks; not memoized)."""
        ...

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextEncoding:
        """Encode other texts ``[N, L]`` (e.g. negatives gathered from other ranks; not memoized)."""
        ...

    @property
    def teacher(self) -> StepView:
        """The momentum teacher's view of this step (no gradients); an error without a teacher."""
        ...

    @property
    def teacher_steps(self) -> int:
        """Steps since objectives started consulting the teacher (negative: not yet, or no teacher)."""
        ...

    @property
    def teacher_ready(self) -> bool:
        """Whether objectives should read the momentum teacher at this step."""
        ...

    @property
    def sim(self) -> Similarity:
        """In-batch contrastive logits ``[B, B]`` from the recipe's similarity provider (once per step)."""
        ...

    @property
    def global_sim(self) -> Similarity:
        """This rank's samples against every rank's batch, ``[B, N]`` (once per step)."""
        ...

    def module(self, name: str) -> nn.Module:
        """The teacher's copy of an objective's module, e.g. ``"mlm.head"`` (teacher views only)."""
        ...


@runtime_checkable
class SimilarityProvider(Protocol):
    """An objective that defines the contrastive similarities hard-negative samplers read (declared with
    ``provides_similarity`` on its config; the model checks the methods are there when it is built)."""

    def in_batch_similarity(self, step: StepView) -> Similarity:
        """``[B, B]`` logits of this rank's samples against their own batch."""
        ...

    def global_similarity(self, step: StepView) -> Similarity:
        """``[B, N]`` logits of this rank's samples against the global batch (columns in rank order)."""
        ...
