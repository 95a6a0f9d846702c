"""Masked image inputs for masked image modelling: chosen patch embeddings replaced by a learned token.

The positions are a ``[B, K]`` index with the same ``K`` for every image (a fixed masking ratio), so
the masked batch has static shapes and drawing it needs no device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PatchMask:
    """Which patches of each image to hide, and what to show instead.

    Attributes:
        positions: ``[B, K]`` long patch indices in ``[0, P)`` (row-major over the patch grid).
        token: ``[D]`` the mask embedding put in their place (a parameter of the objective).
    """

    positions: Tensor
    token: Tensor

    def apply(self, patches: Tensor) -> Tensor:
        """``[B, P, D]`` patch embeddings → the same with the masked ones replaced by ``token``."""
        b, k = self.positions.shape
        index = self.positions.unsqueeze(-1).expand(b, k, patches.shape[-1])
        return patches.scatter(1, index, self.token.to(patches.dtype).expand(b, k, -1))


def random_patch_positions(batch: int, patches: int, count: int, device: torch.device | str) -> Tensor:
    """``[batch, count]`` distinct patch indices per row, uniformly at random (sorted)."""
    if not 0 < count <= patches:
        raise ValueError(f"cannot mask {count} of {patches} patches")
    noise = torch.rand(batch, patches, device=device)
    return noise.topk(count, dim=1).indices.sort(dim=1).values
