"""Weakly supervised grounding as ALBEF does it: Grad-CAM on one fusion layer's cross-attention.

For a batch of (image, expression) pairs the ITM match logit is differentiated with respect to the
cross-attention probabilities ``A [B, H, L, 1+P]`` of the chosen fusion layer (ALBEF: the third,
"specialised in localisation"); the map is ``mean_heads,tokens(A · relu(∂s/∂A))`` over the patch
keys, reshaped to the patch grid ``[B, g, g]``. Pointing accuracy: the map, upsampled (bicubic) to
the image, peaks inside the expression's box.

Box accuracy (ALBEF's RefCOCO+ ``val_d``/``testA_d``/``testB_d``): among candidate boxes (MAttNet
detections, or every object of a synthetic scene) :func:`select_boxes` picks the one of maximal
``sum(map inside box) / sqrt(box area)``, the map upsampled (bicubic) to the image file's size as in
ALBEF's ``grounding_eval``; the pick is correct when its IoU with the ground-truth box is ≥ 0.5
(:func:`box_correct`). :func:`chance_accuracy` is the same rule for a uniformly random candidate.
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
from vlkit.eval.finite import require_finite_scores
from vlkit.nn.bert import BertAttention

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels — of the model's input image for pointing and overlays, of the
image file for box selection (each function says which)."""

IOU_THRESHOLD = 0.5
"""A picked box is correct when its IoU with the ground truth reaches this (ALBEF, REFER)."""


def fusion_cross_attention(encoder: Encoder, fusion_layer: int) -> BertAttention:
    """The cross-attention module of fusion layer ``fusion_layer`` (1-based among the fusion layers)."""
    stack = encoder.fusion_stack()
    if stack is None:
        raise ValueError(f"Grad-CAM grounding reads cross-attention; the `{type(encoder).__name__}` has none "
                         "(use an ALBEF encoder)")
    layers = list(stack.fusion_layers)
    if not 1 <= fusion_layer <= len(layers):
        raise ValueError(f"fusion_layer {fusion_layer} is outside the encoder's {len(layers)} fusion layers")
    attention = stack.layer_at(layers[fusion_layer - 1]).crossattention
    if attention is None:  # the stack's fusion layers are the ones with cross-attention
        raise RuntimeError(f"fusion layer {fusion_layer} of the stack has no cross-attention")
    return attention


@contextlib.contextmanager
def recorded_attention(module: BertAttention) -> Iterator[list[Tensor]]:
    """Within the block, ``module`` (a :class:`~vlkit.nn.bert.BertAttention`) records its probabilities."""
    probe: list[Tensor] = []
    module.probe = probe
    try:
        yield probe
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
    require_finite_scores(maps, "grounding: Grad-CAM maps")  # a NaN map's argmax would be its "peak"
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


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes (continuous coordinates, as
    REFER's ``computeIoU`` up to its one-pixel edge rule); 0 when the union is empty."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_correct(picked: Box, truth: Box, threshold: float = IOU_THRESHOLD) -> bool:
    """ALBEF's / REFER's rule: the picked box counts when ``IoU(picked, truth) ≥ threshold``."""
    return box_iou(picked, truth) >= threshold


def chance_accuracy(candidates: Sequence[Box], truth: Box, threshold: float = IOU_THRESHOLD) -> float:
    """Expected correctness (in [0, 1]) of a uniformly random candidate: the fraction that would count."""
    return sum(box_correct(c, truth, threshold) for c in candidates) / len(candidates)


def box_scores(heat: Tensor, boxes: Sequence[Box], alpha: float = 0.5) -> Tensor:
    """``[K]`` scores of ``boxes`` on a ``[H, W]`` map: the map summed over the pixels
    ``[int(top):int(bottom), int(left):int(right)]`` (ALBEF's slicing; negative edges clipped to 0) divided
    by ``area ** alpha`` (ALBEF: ``alpha`` 0.5, i.e. the square root). Boxes of no area score ``-inf``."""
    scores = []
    for left, top, right, bottom in boxes:
        area = (right - left) * (bottom - top)
        region = heat[max(0, int(top)):max(0, int(bottom)), max(0, int(left)):max(0, int(right))]
        scores.append(float(region.sum()) / area**alpha if area > 0 else -math.inf)
    return torch.tensor(scores, dtype=torch.float64)


def select_boxes(maps: Tensor, candidates: Sequence[Sequence[Box]], image_sizes: Sequence[tuple[int, int]], *,
                 alpha: float = 0.5) -> list[int]:
    """Per expression, the index of the candidate box ALBEF's rule picks.

    Each ``[g, g]`` map of ``maps [B, g, g]`` (over the square model input) is upsampled (bicubic, no
    clamping, as ALBEF) to its image's ``(width, height)`` from ``image_sizes`` — undoing the input's
    resize, aspect ratio included — and the candidate (``(left, top, right, bottom)`` in pixels of that
    image) of maximal :func:`box_scores` is picked; ties go to the first.
    """
    if not len(maps) == len(candidates) == len(image_sizes):
        raise ValueError(f"{len(maps)} maps, {len(candidates)} candidate lists and {len(image_sizes)} image sizes")
    picks = []
    for heat, boxes, (width, height) in zip(maps, candidates, image_sizes, strict=True):
        if not boxes:
            raise ValueError("box selection needs at least one candidate box per expression")
        full = F.interpolate(heat[None, None].float(), size=(height, width), mode="bicubic", align_corners=False)[0, 0]
        picks.append(int(box_scores(full, boxes, alpha).argmax()))
    return picks


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
