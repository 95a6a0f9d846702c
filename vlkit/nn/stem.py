"""Patch embeddings ("stems") of the image towers.

- ``patch`` (ViT, ALBEF, VLMo): one ``p×p`` convolution with stride ``p`` — a linear map of each patch.
- ``conv``: the convolutional stem of Xiao et al., "Early Convolutions Help Transformers See Better"
  (NeurIPS 2021): ``log2 p`` 3×3 stride-2 convolutions, each followed by a normalization and a GELU,
  then a 1×1 convolution to the width. It yields the same token grid as ``patch`` and makes ViTs train
  much faster from scratch on little data (a tiny ViT on the synthetic shapes learns which coloured
  shapes an image holds in a few hundred steps instead of thousands). vlkit normalizes over channels
  with LayerNorm rather than the paper's BatchNorm, so the stem keeps no batch statistics: encodings
  do not depend on the batch they are in or on train/eval mode, and momentum teachers need no buffers.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Stem = Literal["patch", "conv"]
STEMS: tuple[str, ...] = ("patch", "conv")


def stem_problem(stem: str, patch_size: int) -> str | None:
    """Why ``stem`` cannot embed ``patch_size`` patches, or None when it can."""
    if stem not in STEMS:
        return f"unknown stem `{stem}`; choose one of {', '.join(STEMS)}"
    if stem == "conv" and (patch_size < 2 or patch_size & (patch_size - 1)):
        return f"the conv stem needs a patch_size that is a power of two ≥ 2, got {patch_size}"
    return None


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: ``[B, 3, H, W]`` → ``[B, (H/p)·(W/p), D]``."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, H, W]`` at every position."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """Strided 3×3 convolutions down to the patch grid, then a 1×1 projection:
    ``[B, 3, H, W]`` → ``[B, (H/p)·(W/p), D]``.

    Args:
        patch_size: total stride ``p``, a power of two ≥ 2 (one stride-2 convolution per factor 2).
        dim: output width ``D``; the first convolution has ``D/2`` channels, the others ``D``.
    """

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        if problem := stem_problem("conv", patch_size):
            raise ValueError(problem)
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(patch_size.bit_length() - 1):
            width = dim // 2 if i == 0 else dim
            layers += [nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1), ChannelLayerNorm(width),
                       nn.GELU()]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.stem(images)).flatten(2).transpose(1, 2)


def build_stem(stem: Stem, patch_size: int, dim: int) -> nn.Module:
    """The patch embedding named by ``stem``."""
    if stem == "patch":
        return PatchEmbed(patch_size, dim)
    if stem == "conv":
        return ConvStem(patch_size, dim)
    raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
