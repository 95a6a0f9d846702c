"""Packed (variable-length) text: the real tokens of a right-padded batch laid end to end.

A caption batch padded to ``L`` tokens wastes ``1 - mean(len)/L`` of every text-side matmul on
padding (about half for COCO-like captions at ``L = 30``). Packing gathers the real tokens of
``[B, L, D]`` into one ``[1, T, D]`` sequence (``T = Σ len``), the layers run on it with a
block-diagonal attention mask (each caption attends only within itself: xformers'
``BlockDiagonalMask`` on CUDA), and the result is scattered back to ``[B, L, D]`` with zeros at
the padding. Token counts come from the host (the collate function knows them), so no step of this
waits on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedSeqlens:
    """Lengths of the sequences packed along the token axis of a ``[1, ΣN, H, D]`` tensor.

    Host-side Python ints (known in the collate function), so building masks needs no device sync.

    Attributes:
        q: query length of each packed sequence.
        k: key length of each packed sequence (same count as ``q``); ``None`` means equal to ``q``.
    """

    q: tuple[int, ...]
    k: tuple[int, ...] | None = None

    @property
    def kv(self) -> tuple[int, ...]:
        return self.k if self.k is not None else self.q

    def __post_init__(self) -> None:
        if self.k is not None and len(self.k) != len(self.q):
            raise ValueError(f"packed q and k need the same number of sequences ({len(self.q)} vs {len(self.k)})")



def real_token_positions(lengths: Sequence[int], width: int) -> Tensor:
    """``[Σ lengths]`` flat positions ``b * width + i`` (``i < lengths[b]``) of right-padded rows, on the
    host (vectorized: no Python loop over the batch)."""
    counts = torch.tensor(lengths)
    total = int(sum(lengths))  # host ints: shapes known without reading a tensor
    starts = torch.cumsum(counts, 0) - counts  # where each row begins in the packed sequence
    rows = torch.repeat_interleave(torch.arange(len(lengths)), counts, output_size=total)
    within = torch.arange(total) - torch.repeat_interleave(starts, counts, output_size=total)
    return rows * width + within


@dataclass(frozen=True)
class TextPacking:
    """Where the real tokens of a right-padded ``[B, L]`` batch sit.

    Attributes:
        seqlens: tokens per caption (host ints), for the attention mask.
        index: ``[T]`` long, flat positions ``b * L + i`` of the real tokens in ``[B * L]``, in order.
        batch: ``B``.
        width: ``L``.
    """

    seqlens: PackedSeqlens
    index: Tensor
    batch: int
    width: int

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], width: int, device: torch.device | str) -> TextPacking:
        """Packing of captions of ``lengths`` tokens, right-padded to ``width``.

        Raises:
            ValueError: a length outside ``[1, width]``.
        """
        lengths = tuple(int(n) for n in lengths)
        if any(not 0 < n <= width for n in lengths):
            raise ValueError(f"packed text lengths must be in [1, {width}], got {lengths}")
        device = torch.device(device)
        flat = real_token_positions(lengths, width)
        if device.type == "cuda":  # pinned, so the copy is asynchronous
            flat = flat.pin_memory()
        return cls(PackedSeqlens(lengths), flat.to(device, non_blocking=True), len(lengths), width)

    @property
    def tokens(self) -> int:
        """``T``, the number of real tokens."""
        return self.index.shape[0]

    def pack(self, x: Tensor) -> Tensor:
        """``[B, L, D]`` → ``[1, T, D]`` (the real tokens, caption after caption)."""
        if x.shape[:2] != (self.batch, self.width):
            raise ValueError(f"packing expects [{self.batch}, {self.width}, D], got {tuple(x.shape)}")
        return x.flatten(0, 1).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: Tensor) -> Tensor:
        """``[1, T, D]`` → ``[B, L, D]`` with zeros at the padding."""
        out = x.new_zeros(self.batch * self.width, x.shape[-1])
        return out.index_copy(0, self.index, x.squeeze(0)).unflatten(0, (self.batch, self.width))
