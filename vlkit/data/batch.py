"""The batch a training step receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vlkit.data.masking import MaskedTokens


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
        extras: anything a plug-in's batch transform added.
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
        def move(x: Any) -> Any:
            return x.to(device, non_blocking=non_blocking) if hasattr(x, "to") else x

        return Batch(move(self.images), move(self.input_ids), move(self.attention_mask), move(self.idx),
                     None if self.mlm is None else self.mlm.to(device, non_blocking),
                     {k: move(v) for k, v in self.extras.items()}, self.skipped, self.text_lengths)
