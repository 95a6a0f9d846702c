"""ALBEF's NLVR2 "bi-fusion": every fusion layer of a pre-trained text stack, duplicated into a pair.

For fusion layer ``k`` of the stack (``k = 0 .. F-1``), the module holds layers ``2k`` and ``2k+1``.
Layer ``2k`` cross-attends to the tokens of the first image, layer ``2k+1`` to those of the second;
they run in order ``0, 1, 2, ..., 2F-1`` over the text tokens, and the [CLS] of the last one is
classified. Within a pair, the cross-attention ``key`` and ``value`` projections are one module
(``nn.Linear`` objects shared by both layers, so their gradients accumulate in one parameter);
queries, the cross-attention output, self-attention and FFN are separate copies of the same layer.

State dict (``state_dict()`` lists a shared module under each layer that holds it):
``layer.{i}.attention.{self.{query,key,value}, output.{dense,LayerNorm}}.{weight,bias}``,
``layer.{i}.crossattention.{self.{query,key,value}, output.{dense,LayerNorm}}.{weight,bias}``,
``layer.{i}.intermediate.dense.*``, ``layer.{i}.output.{dense,LayerNorm}.*`` for ``i < 2F``, where
``layer.{2k+1}.crossattention.self.{key,value}.*`` are the same tensors as ``layer.{2k}``'s.
:func:`bifusion_aliases` maps every such key to the stack layer it duplicates,
``encoder.layer.{fusion_layer + i // 2}.<same suffix>``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from vlkit.nn.bert import KV, BertConfig, BertLayer, BertStack


def _share_cross_kv(first: BertLayer, second: BertLayer) -> None:
    """Make ``second``'s cross-attention key/value projections the very modules of ``first``."""
    assert first.crossattention is not None and second.crossattention is not None
    source, target = first.crossattention.self, second.crossattention.self
    target.key, target.value = source.key, source.value


def _dotted(prefix: str) -> str:
    """``"fusion"`` → ``"fusion."``; ``""`` stays empty."""
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def bifusion_aliases(own_prefix: str, stack_prefix: str, fusion_layer: int, num_fusion: int,
                     layer_param_names: Iterable[str]) -> dict[str, str]:
    """Own key → key of the stack layer it duplicates, for every key of a :class:`BiFusionLayers`.

    Args:
        own_prefix: where the module sits, e.g. ``"fusion."`` (an objective's attribute).
        stack_prefix: the key prefix of the source :class:`BertStack` in the checkpoint, e.g.
            ``"encoder.text_encoder."``; its layers are ``<stack_prefix>encoder.layer.{n}.``.
        fusion_layer: index of the stack's first fusion layer.
        num_fusion: number of fusion layers ``F`` of the stack (the module holds ``2F``).
        layer_param_names: the keys of one layer's ``state_dict()`` (e.g. ``attention.self.query.weight``).

    Returns:
        ``{"<own_prefix>layer.{i}.<name>": "<stack_prefix>encoder.layer.{fusion_layer + i // 2}.<name>"}``.
    """
    if num_fusion < 1:
        raise ValueError(f"num_fusion must be ≥ 1, got {num_fusion}")
    own, stack = _dotted(own_prefix), _dotted(stack_prefix)
    names = list(layer_param_names)
    return {f"{own}layer.{i}.{name}": f"{stack}encoder.layer.{fusion_layer + i // 2}.{name}"
            for i in range(2 * num_fusion) for name in names}


class BiFusionLayers(nn.Module):
    """``2F`` fusion layers over a text and an image pair: ``[B, L, D]`` → ``[B, L, D]``.

    Args:
        cfg: shape of the text stack (width, heads, FFN, dropout, LayerNorm epsilon).
        num_fusion: ``F``, the number of fusion layers duplicated.
        encoder_width: width ``Dv`` of the image tokens.
        backend: attention backend.
    """

    def __init__(self, cfg: BertConfig, num_fusion: int, encoder_width: int, backend: str = "auto") -> None:
        super().__init__()
        if num_fusion < 1:
            raise ValueError(f"num_fusion must be ≥ 1, got {num_fusion}")
        self.num_fusion = num_fusion
        layers = [BertLayer(cfg, encoder_width, backend=backend) for _ in range(2 * num_fusion)]
        self.layer = nn.ModuleList(layers)
        for k in range(num_fusion):
            _share_cross_kv(layers[2 * k], layers[2 * k + 1])

    @classmethod
    def from_stack(cls, stack: BertStack, copy_weights: bool = True) -> BiFusionLayers:
        """Pairs shaped like ``stack``'s fusion layers (on their device and dtype), initialized as
        copies of them unless ``copy_weights`` is False (then PyTorch's default initialization)."""
        fusion = stack.fusion_layers
        if len(fusion) == 0:
            raise ValueError("the text stack has no fusion layers (cross-attention) to duplicate")
        first = stack.layer_at(fusion.start)
        assert first.crossattention is not None
        key = first.crossattention.self.key
        module = cls(stack.cfg, len(fusion), key.in_features, backend=stack.attention_backend)
        module.to(device=key.weight.device, dtype=key.weight.dtype)
        if copy_weights:
            module.copy_from_stack(stack)
        return module

    @torch.no_grad()
    def copy_from_stack(self, stack: BertStack) -> None:
        """Copy fusion layer ``k`` of ``stack`` into layers ``2k`` and ``2k+1`` (in place, so the
        shared key/value projections stay shared)."""
        fusion = stack.fusion_layers
        if len(fusion) != self.num_fusion:
            raise ValueError(f"the stack has {len(fusion)} fusion layers; this module duplicates {self.num_fusion}")
        for k, n in enumerate(fusion):
            state = stack.layers[n].state_dict()
            for layer in self.layer[2 * k: 2 * k + 2]:
                layer.load_state_dict(state)

    def _layer(self, index: int) -> BertLayer:
        layer = self.layer[index]
        if not isinstance(layer, BertLayer):
            raise TypeError(f"bi-fusion layer {index} is a {type(layer).__name__}, not a BertLayer")
        return layer

    def aliases(self, own_prefix: str, stack_prefix: str, fusion_layer: int) -> dict[str, str]:
        """:func:`bifusion_aliases` for this module (every key ``state_dict()`` lists)."""
        return bifusion_aliases(own_prefix, stack_prefix, fusion_layer, self.num_fusion,
                                self.layer[0].state_dict().keys())

    def image_kv(self, image_embeds: Tensor) -> list[KV]:
        """Cross-attention keys/values of every layer, each ``[B, M, H, Dh]``.

        Args:
            image_embeds: ``[2B, M, Dv]``, the first images of all samples, then the second (rows
                ``b`` and ``B + b`` are sample ``b``'s pair).

        Returns:
            ``2F`` entries; entry ``2k`` holds rows ``:B`` and ``2k+1`` rows ``B:`` of one projection per
            pair (each image's keys/values are computed once, by the pair's shared modules).
        """
        rows = image_embeds.shape[0]
        if rows % 2:
            raise ValueError(f"bi-fusion needs an even number of images (first images, then second), got {rows}")
        half = rows // 2
        kv: list[KV] = []
        for k in range(self.num_fusion):
            keys, values = self._layer(2 * k).cross_kv(image_embeds)
            kv += [(keys[:half], values[:half]), (keys[half:], values[half:])]
        return kv

    def run(self, text_hidden: Tensor, text_mask: Tensor | None, image_kv: list[KV]) -> Tensor:
        """All ``2F`` layers over ``text_hidden`` ``[B, L, D]`` (mask bool ``[B, L]``, True for real
        tokens) with ``image_kv`` from :meth:`image_kv`; returns ``[B, L, D]``."""
        if len(image_kv) != len(self.layer):
            raise ValueError(f"expected keys/values for {len(self.layer)} layers, got {len(image_kv)}")
        if image_kv[0][0].shape[0] != text_hidden.shape[0]:
            raise ValueError(f"{text_hidden.shape[0]} texts against image pairs of {image_kv[0][0].shape[0]} rows")
        hidden = text_hidden
        for layer, kv in zip(self.layer, image_kv, strict=True):
            hidden = layer(hidden, text_mask, cross_kv=kv)
        return hidden

    def forward(self, text_hidden: Tensor, text_mask: Tensor | None, image_embeds_0: Tensor,
                image_embeds_1: Tensor) -> Tensor:
        """Fuse text with an image pair.

        Args:
            text_hidden: ``[B, L, D]`` output of the stack's text layers.
            text_mask: bool ``[B, L]``, True for real tokens.
            image_embeds_0: ``[B, M, Dv]`` tokens of the first image of each sample.
            image_embeds_1: ``[B, M, Dv]`` tokens of the second image.

        Returns:
            ``[B, L, D]`` fused text tokens (the [CLS] is row 0).
        """
        if image_embeds_0.shape != image_embeds_1.shape:
            raise ValueError(f"the two images' tokens differ in shape: {tuple(image_embeds_0.shape)} vs "
                             f"{tuple(image_embeds_1.shape)}")
        return self.run(text_hidden, text_mask, self.image_kv(torch.cat([image_embeds_0, image_embeds_1])))
