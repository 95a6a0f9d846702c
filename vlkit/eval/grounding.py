"""Weakly supervised grounding as ALBEF does it: Grad-CAM on one fusion layer's cross-attention.

For a batch of (image, expression) pairs the ITM match logit is differentiated with respect to the
cross-attention probabilities ``A [B, H, L, 1+P]`` of the chosen fusion layer (ALBEF: the third,
"specialised in localisation"); the map is ``mean_heads,tokens(A · relu(∂s/∂A))`` over the patch
keys, reshaped to the patch grid ``[B, g, g]``. Pointing accuracy: the map, upsampled (bicubic) to
the image, peaks inside the expression's box.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from vlkit.encoders.base import Encoder

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels of the model's input image."""


def fusion_cross_attention(encoder: Encoder, fusion_layer: int) -> nn.Module:
    """The cross-attention module of fusion layer ``fusion_layer`` (1-based among the fusion layers)."""
    stack = getattr(encoder, "text_encoder", None)
    if stack is None or not hasattr(stack, "fusion_layers"):
        raise ValueError(f"Grad-CAM grounding reads cross-attention; the `{type(encoder).__name__}` has none "
                         "(use an ALBEF encoder)")
    layers = list(stack.fusion_layers)
    if not 1 <= fusion_layer <= len(layers):
        raise ValueError(f"fusion_layer {fusion_layer} is outside the encoder's {len(layers)} fusion layers")
    return stack.layers[layers[fusion_layer - 1]].crossattention


@contextlib.contextmanager
def recorded_attention(module: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, ``module`` (a :class:`~vlkit.nn.bert.BertAttention`) records its probabilities."""
    module.probe = []
    try:
        yield module.probe
    finally:
        module.probe = None


def gradcam(encoder: Encoder, itm_head: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
            fusion_layer: int) -> Tensor:
    """``[B, g, g]`` Grad-CAM maps (non-negative) of ``images [B, 3, H, W]`` for texts ``[B, L]`` over the
    ``g × g`` patch grid."""
    module = fusion_cross_attention(encoder, fusion_layer)
    with torch.enable_grad(), recorded_attention(module) as probe:
        image = encoder.encode_image(images)
        text = encoder.encode_text(input_ids, attention_mask)
        fused = encoder.fuse(image, text)
        score = itm_head(fused.cls)[:, 1].sum()
        (attn,) = probe
        (grad,) = torch.autograd.grad(score, attn)
    tokens = attention_mask[:, None, :, None].float()  # real text tokens only
    cams = attn[..., 1:] * tokens
    grads = grad[..., 1:].clamp(min=0) * tokens
    maps = (cams * grads).mean(1).sum(1) / tokens[:, 0].sum(1)  # [B, P]: mean over heads, then text tokens
    grid = math.isqrt(maps.shape[1])
    if grid * grid != maps.shape[1]:
        raise ValueError(f"{maps.shape[1]} image tokens after [CLS] do not form a square patch grid")
    return maps.detach().view(-1, grid, grid)


def upsample(maps: Tensor, size: int) -> Tensor:
    """``[B, g, g]`` → ``[B, size, size]`` (bicubic, as ALBEF)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def peak(heat: Tensor) -> tuple[int, int]:
    """``(x, y)`` pixel of the maximum of a ``[H, W]`` map."""
    index = int(heat.flatten().argmax())
    return index % heat.shape[1], index // heat.shape[1]


def pointing_hits(maps: Tensor, boxes: Sequence[Box], size: int) -> list[bool]:
    """Whether each map's peak (upsampled to ``size``) falls inside its box."""
    hits = []
    for heat, (left, top, right, bottom) in zip(upsample(maps, size), boxes, strict=True):
        x, y = peak(heat)
        hits.append(left <= x + 0.5 <= right and top <= y + 0.5 <= bottom)
    return hits


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] → ``[H, W, 3]`` uint8 'hot' colours (black → red → yellow → white)."""
    r = np.clip(3 * heat, 0, 1)
    g = np.clip(3 * heat - 1, 0, 1)
    b = np.clip(3 * heat - 2, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: Image.Image, heat: Tensor, box: Box | None, text: str, scale: int = 4) -> Image.Image:
    """The image (enlarged ``scale``×) beside the same image with the heat-map blended over it, the box
    (green) and the map's peak (cyan cross); the expression written underneath."""
    size = image.width * scale
    base = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
    h = heat.float()
    h = (h - h.min()) / (h.max() - h.min() + 1e-12)
    hot = Image.fromarray(heat_colors(upsample(h[None], size)[0].clamp(0, 1).numpy()))
    blended = Image.blend(base, hot, 0.55)
    draw = ImageDraw.Draw(blended)
    if box is not None:
        draw.rectangle([c * scale for c in box], outline=(0, 255, 0), width=2)
    x, y = peak(upsample(h[None], size)[0])
    draw.line([(x - 6, y), (x + 6, y)], fill=(0, 255, 255), width=2)
    draw.line([(x, y - 6), (x, y + 6)], fill=(0, 255, 255), width=2)
    sheet = Image.new("RGB", (2 * size + 8, size + 24), (255, 255, 255))
    sheet.paste(base, (0, 0))
    sheet.paste(blended, (size + 8, 0))
    ImageDraw.Draw(sheet).text((4, size + 6), text, fill=(0, 0, 0))
    return sheet


def save_overlays(folder: Path, items: Sequence[tuple[Image.Image, Tensor, Box | None, str, bool]]) -> list[Path]:
    """Write one PNG per ``(image, map, box, expression, hit)``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, heat, box, text, hit) in enumerate(items):
        path = folder / f"{i:03d}_{'hit' if hit else 'miss'}.png"
        overlay(image, heat, box, text).save(path)
        paths.append(path)
    return paths
