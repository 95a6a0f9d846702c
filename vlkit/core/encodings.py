"""What encoders return and fusion reads, named with ALBEF's vocabulary: ``embeds`` are tokens,
``feat`` the projected, L2-normalized [CLS] that contrastive objectives read. A training step memoizes
these so several objectives share one encoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]
"""One fusion layer's cross-attention keys and values, each ``[B, M, H, Dh]``."""

ImageKV = list[KV] | None
"""Image-side fusion state several fusion passes over the same images share: ALBEF's per-layer keys
and values; None for encoders that have nothing to share (MoME fuses from the token inputs)."""


def _select(x: Tensor | None, index: Tensor) -> Tensor | None:
    return None if x is None else x[index]


def _to(x: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if x is None else x.to(device)


def _cat(parts: Sequence[Tensor | None]) -> Tensor | None:
    """The parts concatenated along the batch axis; None when the first part has none."""
    if parts[0] is None:
        return None
    return torch.cat([p for p in parts if p is not None])


@dataclass
class ImageEncoding:
    """An image batch as an encoder sees it.

    Attributes:
        embeds: ``[B, M, D]`` image tokens after the final norm (ALBEF ``image_embeds``).
        feat: ``[B, E]`` projected, L2-normalized [CLS] for contrastive objectives (``image_feat``),
            or None when not computed.
        vl_feat: ``[B, E]`` VLMo's second contrastive feature from the vision-language experts.
        inputs: ``[B, M, D]`` token embeddings entering the encoder (MoME fuses from these).
    """

    embeds: Tensor | None
    feat: Tensor | None = None
    vl_feat: Tensor | None = None
    inputs: Tensor | None = None

    def select(self, index: Tensor) -> ImageEncoding:
        """Rows ``index`` ``[B']`` of every tensor."""
        return ImageEncoding(_select(self.embeds, index), _select(self.feat, index), _select(self.vl_feat, index),
                             _select(self.inputs, index))

    def to(self, device: torch.device | str) -> ImageEncoding:
        """Every tensor on ``device``."""
        return ImageEncoding(_to(self.embeds, device), _to(self.feat, device), _to(self.vl_feat, device),
                             _to(self.inputs, device))

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        first = next(t for t in (self.embeds, self.feat, self.vl_feat, self.inputs) if t is not None)
        return first.device

    @staticmethod
    def cat(parts: Sequence[ImageEncoding]) -> ImageEncoding:
        """Batches concatenated along the batch axis."""
        return ImageEncoding(_cat([p.embeds for p in parts]), _cat([p.feat for p in parts]),
                             _cat([p.vl_feat for p in parts]), _cat([p.inputs for p in parts]))


@dataclass
class TextEncoding:
    """A text batch as an encoder sees it.

    Attributes:
        embeds: ``[B, L, D]`` unimodal text tokens (ALBEF ``text_embeds``: output of the text
            layers), or None when only fusion inputs were computed.
        mask: ``[B, L]`` bool, True for real tokens.
        feat: ``[B, E]`` projected, L2-normalized [CLS] (``text_feat``).
        vl_feat: ``[B, E]`` VLMo's VL-path feature.
        inputs: ``[B, L, D]`` token embeddings (MoME fuses from these).
    """

    embeds: Tensor | None
    mask: Tensor
    feat: Tensor | None = None
    vl_feat: Tensor | None = None
    inputs: Tensor | None = None

    def select(self, index: Tensor) -> TextEncoding:
        """Rows ``index`` ``[B']`` of every tensor."""
        return TextEncoding(_select(self.embeds, index), self.mask[index], _select(self.feat, index),
                            _select(self.vl_feat, index), _select(self.inputs, index))

    def to(self, device: torch.device | str) -> TextEncoding:
        """Every tensor on ``device``."""
        return TextEncoding(_to(self.embeds, device), self.mask.to(device), _to(self.feat, device),
                            _to(self.vl_feat, device), _to(self.inputs, device))

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return self.mask.device

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        """Batches (of one token width) concatenated along the batch axis."""
        return TextEncoding(_cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]),
                            _cat([p.feat for p in parts]), _cat([p.vl_feat for p in parts]),
                            _cat([p.inputs for p in parts]))


@dataclass
class FusedEncoding:
    """Output of a fusion pass over ``B'`` (image, text) pairs.

    Attributes:
        text: ``[B', L, D]`` fused text tokens (the MLM head reads masked positions here).
        cls: ``[B', D]`` the fused representation the ITM head reads (ALBEF: the [CLS] token;
            VLMo: its pooler over the [CLS] token).
        image: ``[B', M, D]`` fused image tokens, for encoders that update them (MoME), else None.
    """

    text: Tensor
    cls: Tensor
    image: Tensor | None = None


@dataclass(frozen=True)
class PatchMask:
    """Which patches of each image to hide, and what to show instead (masked image modelling).

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
