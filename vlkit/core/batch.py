"""The batch contract between the data loader and the training step.

The loader (``vlkit.data``) builds a :class:`Batch` on the CPU; the step reads it on the device. Fields
every batch has are attributes; what only some objectives read travels in ``Batch.extras`` under the
keys below, each with its own small type, so that an objective can say exactly what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

# ------------------------------------------------------------------ Batch.extras keys
HARD_NEGATIVES = "hard_negatives"
"""Annotation field and ``Batch.extras`` key: one annotated negative caption per row (:class:`HardNegativeText`)."""
PHRASE_REGIONS = "phrase_regions"
"""``Batch.extras`` key: the batch's grounded phrases as token masks and boxes (:class:`PhraseRegions`)."""
LABELS = "labels"
"""``Batch.extras`` key: ``[B]`` class ids (VE, NLVR2, VQA as classification)."""
TARGETS = "targets"
"""``Batch.extras`` key: ``[B, C]`` soft scores (VQA as VLMo trains it)."""
ANSWER_IDS = "answer_ids"
"""``Batch.extras`` key: ``[N, La]`` token ids of every question's distinct answers (``[CLS] answer [SEP]``)."""
ANSWER_MASK = "answer_mask"
"""``Batch.extras`` key: ``[N, La]`` attention mask of :data:`ANSWER_IDS`."""
ANSWER_QUESTION = "answer_question"
"""``Batch.extras`` key: ``[N]`` the batch row (question) each answer belongs to."""
ANSWER_WEIGHTS = "answer_weights"
"""``Batch.extras`` key: ``[N]`` each answer's share of its question's annotations."""


@dataclass
class MaskedTokens:
    """A masked text batch (masked language modelling).

    Attributes:
        input_ids: ``[B, L]`` corrupted ids.
        positions: ``[N]`` flat indices (row · L + column) of the selected tokens, sorted.
        labels: ``[N]`` original ids at those positions.
    """

    input_ids: Tensor
    positions: Tensor
    labels: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskedTokens:
        return MaskedTokens(self.input_ids.to(device, non_blocking=non_blocking),
                            self.positions.to(device, non_blocking=non_blocking),
                            self.labels.to(device, non_blocking=non_blocking))


@dataclass
class HardNegativeText:
    """One annotated negative caption per batch row, tokenized like the captions.

    Attributes:
        input_ids: ``[B, L']`` token ids (a row without a negative holds an empty caption).
        attention_mask: ``[B, L']``.
        valid: ``[B]`` float, 1.0 where the row's caption has a negative, 0.0 for a placeholder.
        lengths: tokens per row as host ints (for packed text encoders).
        count: rows with a real negative (a host int, so that a batch without any skips them unsynced).
    """

    input_ids: Tensor
    attention_mask: Tensor
    valid: Tensor
    lengths: tuple[int, ...]
    count: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HardNegativeText:
        return HardNegativeText(self.input_ids.to(device, non_blocking=non_blocking),
                                self.attention_mask.to(device, non_blocking=non_blocking),
                                self.valid.to(device, non_blocking=non_blocking), self.lengths, self.count)


@dataclass
class PhraseRegions:
    """A batch's grounded phrases, ready for phrase objectives (``grounding``, ``phrase_patch``).

    Attributes:
        rows: ``[P]`` the batch row (pair) of each phrase.
        tokens: ``[P, L]`` bool, the phrase's tokens in its row.
        boxes: ``[P, 4]`` ``(cx, cy, w, h)`` as fractions of the image side.
        dropped: phrases of the batch left out (truncated away, or text changed by caption cleaning).
    """

    rows: Tensor
    tokens: Tensor
    boxes: Tensor
    dropped: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PhraseRegions:
        return PhraseRegions(self.rows.to(device, non_blocking=non_blocking),
                             self.tokens.to(device, non_blocking=non_blocking),
                             self.boxes.to(device, non_blocking=non_blocking), self.dropped)


@runtime_checkable
class Movable(Protocol):
    """An extras value that moves to a device like a tensor: tensors, the contract types above, or a
    plug-in's own type with the same ``to`` method."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Any: ...


def _move(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    """An extras value on ``device`` when it is :class:`Movable`; anything else (lists of host data) stays."""
    return value.to(device, non_blocking=non_blocking) if isinstance(value, Movable) else value


@dataclass
class Batch:
    """One training batch.

    Attributes:
        images: ``[B, 3, H, W]`` normalized images (uint8 until normalized on the device, with
            ``data.normalize_on_device``); None in a text-only batch.
        input_ids: ``[B, L]`` token ids; None in an image-only batch.
        attention_mask: ``[B, L]`` (1 for real tokens); None in an image-only batch.
        idx: ``[B]`` image ids; captions of the same image share one (they are positives of each other).
        mlm: masked copy of the text with the masked positions (when an MLM objective is on).
        extras: what only some objectives read, under the keys of this module (or a plug-in's own).
        skipped: samples dropped from this batch because their image could not be read.
        text_lengths: tokens per caption (``attention_mask`` row sums) as host ints, so that encoders
            can pack text without reading the device; None when unknown.
    """

    images: Tensor | None
    input_ids: Tensor | None
    attention_mask: Tensor | None
    idx: Tensor
    mlm: MaskedTokens | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    text_lengths: tuple[int, ...] | None = None

    @staticmethod
    def lengths_of(attention_mask: Tensor) -> tuple[int, ...]:
        """Row sums of a host-side ``[B, L]`` mask as ints (call it where the mask is made, on the CPU)."""
        return tuple(attention_mask.sum(dim=1).tolist())

    @property
    def size(self) -> int:
        return self.idx.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, non_blocking=non_blocking)

        return Batch(move(self.images), move(self.input_ids), move(self.attention_mask),
                     self.idx.to(device, non_blocking=non_blocking),
                     None if self.mlm is None else self.mlm.to(device, non_blocking),
                     {k: _move(v, device, non_blocking) for k, v in self.extras.items()}, self.skipped,
                     self.text_lengths)
