"""Weakly supervised visual grounding (ALBEF): Grad-CAM of the ITM score on a fusion layer's
cross-attention (:mod:`vlkit.eval.grounding`), scored by pointing accuracy where boxes are known and
drawn as PNG overlays (image | heat-map with the box and the map's peak) in ``OUT/gradcam/``.

Expressions come from ``annotations`` — a JSON list of ``{"image", "text", "box": [left, top, right,
bottom]}`` in pixels of the image file — or from the synthetic world ("the red circle" for every
object whose colour and shape are unique in its image). Metrics: ``pointing_acc`` (percent), ``n``,
``center_acc`` (always pointing at the image centre) and ``area_acc`` (a uniformly random point:
the mean box area fraction), both baselines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vlkit.data.json_dataset import AnnotationError, load_image, read_annotation_list
from vlkit.data.synthetic.grounding import Expression
from vlkit.data.transforms import eval_transform
from vlkit.eval.grounding import fusion_cross_attention, gradcam, pointing_hits, save_overlays
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError
from vlkit.tasks.base import Task, TaskContext

log = logging.getLogger("vlkit.tasks")


@dataclass(kw_only=True)
class GroundingConfig(ComponentConfig):
    """Grad-CAM grounding.

    Attributes:
        fusion_layer: the fusion layer whose cross-attention is read, 1-based among the fusion layers
            (ALBEF: 3); null: the third, or the last when the encoder has fewer.
        annotations: a JSON list of ``{"image", "text", "box"}``; null: the data source's expressions.
        image_root: folder the ``image`` paths of ``annotations`` are relative to.
        split: the data source's split (synthetic world).
        max_expressions: evaluate at most this many (in order); null: all.
        overlays: PNG overlays written (the first expressions), when the evaluation has an output folder.
    """

    fusion_layer: int | None = None
    annotations: str | None = None
    image_root: str = "."
    split: str = "test"
    max_expressions: int | None = 600
    overlays: int = 16

    def __post_init__(self) -> None:
        if self.fusion_layer is not None and self.fusion_layer < 1:
            raise ConfigError("counts fusion layers from 1 (ALBEF: 3)", key="fusion_layer")


def read_expressions(file: Path, image_root: Path) -> list[Expression]:
    """``[{"image", "text", "box": [l, t, r, b]}]`` → expressions (the image size is read per file)."""
    items = read_annotation_list(file, "{image, text, box}")
    out = []
    for index, item in enumerate(items):
        box = item.get("box") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("text"), str)
                and isinstance(box, list) and len(box) == 4 and all(isinstance(c, int | float) for c in box)):
            raise AnnotationError(f"{file}: entry {index} needs `image`, `text` and `box` [left, top, right, bottom]")
        out.append(Expression(image_root / item["image"], item["text"], tuple(float(c) for c in box), 0))
    return out


@register("task", "grounding", config=GroundingConfig)
class Grounding(Task):
    """Grad-CAM grounding with pointing accuracy (see the module docstring)."""

    def __init__(self, cfg: GroundingConfig) -> None:
        self.cfg = cfg

    def expressions(self, ctx: TaskContext) -> list[Expression]:
        if self.cfg.annotations:
            found = read_expressions(Path(self.cfg.annotations), Path(self.cfg.image_root))
        else:
            found = ctx.source.referring_expressions(self.cfg.split)
        if not found:
            raise AnnotationError("no grounding expressions to evaluate")
        return found[: self.cfg.max_expressions] if self.cfg.max_expressions else found

    def layer(self, ctx: TaskContext) -> int:
        count = len(list(getattr(getattr(ctx.encoder, "text_encoder", None), "fusion_layers", [])))
        chosen = self.cfg.fusion_layer or min(3, max(count, 1))
        fusion_cross_attention(ctx.encoder, chosen)  # a clear error for encoders without cross-attention
        return chosen

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        itm = ctx.heads.get("itm")
        if itm is None:
            raise ValueError("Grad-CAM grounding differentiates the ITM score: the model needs an `itm` objective")
        layer = self.layer(ctx)
        size = ctx.image_size
        transform = eval_transform(size, ctx.data.normalize)
        hits, center, area, drawn = [], [], [], []
        expressions = self.expressions(ctx)
        for start in range(0, len(expressions), ctx.eval.batch_size):
            chunk = expressions[start:start + ctx.eval.batch_size]
            pictures = [load_image(e.image) for e in chunk]
            missing = [str(e.image) for e, p in zip(chunk, pictures, strict=True) if p is None]
            if missing:
                raise AnnotationError(f"grounding images missing or corrupt: {', '.join(missing[:5])}")
            boxes = [_scaled(e.box, p, size) for e, p in zip(chunk, pictures, strict=True) if p is not None]
            images = torch.stack([transform(p) for p in pictures if p is not None]).to(ctx.device)
            ids, mask = ctx.tokenize([e.text for e in chunk])
            maps = gradcam(ctx.encoder, itm, images, ids.to(ctx.device), mask.to(ctx.device), layer).cpu()
            batch_hits = pointing_hits(maps, boxes, size)
            hits += batch_hits
            center += [b[0] <= size / 2 <= b[2] and b[1] <= size / 2 <= b[3] for b in boxes]
            area += [(b[2] - b[0]) * (b[3] - b[1]) / size**2 for b in boxes]
            for e, p, heat, box, hit in zip(chunk, pictures, maps, boxes, batch_hits, strict=True):
                if len(drawn) < self.cfg.overlays and p is not None:
                    drawn.append((p.resize((size, size), Image.Resampling.BICUBIC), heat, box, e.text, hit))
        if ctx.out_dir is not None and drawn:
            paths = save_overlays(ctx.out_dir / "gradcam", drawn)
            log.info("wrote %d Grad-CAM overlays to %s", len(paths), paths[0].parent)
        n = len(hits)
        return {"pointing_acc": 100.0 * sum(hits) / n, "center_acc": 100.0 * sum(center) / n,
                "area_acc": 100.0 * sum(area) / n, "n": float(n), "fusion_layer": float(layer)}


def _scaled(box: tuple[float, float, float, float], picture: Image.Image | None,
            size: int) -> tuple[float, float, float, float]:
    """A box in pixels of the image file → pixels of the ``size × size`` model input (clipped)."""
    assert picture is not None
    sx, sy = size / picture.width, size / picture.height
    left, top, right, bottom = box
    return (max(0.0, left * sx), max(0.0, top * sy), min(size, right * sx), min(size, bottom * sy))
