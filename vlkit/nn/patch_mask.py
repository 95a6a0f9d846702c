"""Masked image inputs for masked image modelling: chosen patch embeddings replaced by a learned token
(:class:`~vlkit.core.encodings.PatchMask`).

The positions are a ``[B, K]`` index with the same ``K`` for every image (a fixed masking ratio), so
the masked batch has static shapes and drawing it needs no device sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlkit.core.encodings import PatchMask

__all__ = ["PatchMask", "random_patch_positions"]


def random_patch_positions(batch: int, patches: int, count: int, device: torch.device | str) -> Tensor:
    """``[batch, count]`` distinct patch indices per row, uniformly at random (sorted)."""
    if not 0 < count <= patches:
        raise ValueError(f"cannot mask {count} of {patches} patches")
    noise = torch.rand(batch, patches, device=device)
    return noise.topk(count, dim=1).indices.sort(dim=1).values
