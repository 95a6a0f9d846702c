"""Weakly supervised visual grounding (ALBEF): Grad-CAM of the ITM score on a fusion layer's
cross-attention (:mod:`vlkit.eval.grounding`), scored by pointing accuracy and — where candidate boxes
are known — by ALBEF's box accuracy, and drawn as PNG overlays (image | heat-map with the box and the
map's peak) in ``OUT/gradcam/``.

Expressions come from ``annotations`` — with ``format: simple`` (the default) a JSON list of
``{"image", "text", "box": [left, top, right, bottom]}`` in pixels of the image file; with ``format:
refcoco`` ALBEF's RefCOCO+ files (``refcoco+_val.json`` …, ``detections``: ``dets.json``, ground-truth
boxes from ``refs`` + ``instances``; see :mod:`vlkit.data.formats.refcoco`) — or from the synthetic world ("the
red circle" for every object whose colour and shape are unique in its image; the candidates are all the
image's objects).

Metrics: ``pointing_acc`` (percent), ``n``, ``center_acc`` (always pointing at the image centre) and
``area_acc`` (a uniformly random point: the mean box area fraction), both baselines; ``fusion_layer``.
Where candidates are known (RefCOCO+ detections, synthetic objects): ``box_acc`` (percent of expressions
whose candidate of maximal ``sum(map in box) / sqrt(area)`` has IoU ≥ 0.5 with the ground truth —
ALBEF's ``val_d``/``testA_d``/``testB_d`` for the evaluated file), ``box_chance_acc`` (a uniformly random
candidate: the mean fraction of candidates with IoU ≥ 0.5), ``box_n`` (expressions with candidates) and
``box_acc_{split}`` per REFER split the items name (ALBEF's ``refcoco+_test.json`` holds ``testA`` and
``testB``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor

from vlkit import progress
from vlkit.core.errors import CheckpointError
from vlkit.data.formats.refcoco import GroundingItem, read_refcoco
from vlkit.data.json_dataset import AnnotationError, load_image, read_annotation_list
from vlkit.data.sources import SyntheticSource
from vlkit.data.synthetic import read_scenes
from vlkit.data.synthetic.grounding import Expression
from vlkit.data.transforms import eval_transform
from vlkit.eval.grounding import (
    Box,
    box_correct,
    chance_accuracy,
    fusion_cross_attention,
    gradcam,
    pointing_hits,
    save_overlays,
    select_boxes,
)
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
        annotations: the expressions; null: the data source's (synthetic world). With ``format: simple`` a
            JSON list of ``{"image", "text", "box"}``; with ``format: refcoco`` ALBEF's
            ``refcoco+_{val,test}.json`` (``{"image", "text", "ref_id"}``, see :mod:`vlkit.data.formats.refcoco`).
        format: ``simple`` (every entry must be well formed) or ``refcoco`` (malformed entries skipped;
            boxes from ``box``/``bbox`` fields or ``refs`` + ``instances``; candidates from ``detections``).
        detections: ``refcoco``: ALBEF's ``dets.json`` (``{ref_id: [[x, y, w, h], ...]}``); enables ``box_acc``.
        refs: ``refcoco``: the REFER refs converted from ``refs(unc).p`` to a JSON list (vlkit does not
            unpickle; see :mod:`vlkit.data.formats.refcoco`); needs ``instances``.
        instances: ``refcoco``: COCO ``instances.json`` (ground-truth boxes of the refs' ``ann_id``).
        image_root: folder the ``image`` paths of ``annotations`` are relative to.
        split: the data source's split (synthetic world).
        max_expressions: evaluate at most this many (in order); null: all (ALBEF's figures: every expression).
        overlays: PNG overlays written (the first expressions), when the evaluation has an output folder.
    """

    fusion_layer: int | None = None
    annotations: str | None = None
    format: Literal["simple", "refcoco"] = "simple"
    detections: str | None = None
    refs: str | None = None
    instances: str | None = None
    image_root: str = "."
    split: str = "test"
    max_expressions: int | None = 600
    overlays: int = 16

    def __post_init__(self) -> None:
        if self.fusion_layer is not None and self.fusion_layer < 1:
            raise ConfigError("counts fusion layers from 1 (ALBEF: 3)", key="fusion_layer")
        if self.format == "simple":
            for key, value in (("detections", self.detections), ("refs", self.refs), ("instances", self.instances)):
                if value is not None:
                    raise ConfigError(f"`{key}` is read with `format: refcoco`", key=key)
        elif self.annotations is None:
            raise ConfigError("`format: refcoco` reads the expressions from `annotations` (e.g. refcoco+_val.json)",
                              key="annotations")
        elif (self.refs is None) != (self.instances is None):
            raise ConfigError("ground-truth boxes from REFER refs need both `refs` and `instances`",
                              key="refs" if self.refs is None else "instances")


def read_expressions(file: Path, image_root: Path) -> list[Expression]:
    """``[{"image", "text", "box": [l, t, r, b]}]`` → expressions (the image size is read per file)."""
    items = read_annotation_list(file, "{image, text, box}")
    out = []
    for index, item in enumerate(items):
        box = item.get("box") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("text"), str)
                and isinstance(box, list) and len(box) == 4 and all(isinstance(c, int | float) for c in box)):
            raise AnnotationError(f"{file}: entry {index} needs `image`, `text` and `box` [left, top, right, bottom]")
        left, top, right, bottom = (float(c) for c in box)
        out.append(Expression(image_root / item["image"], item["text"], (left, top, right, bottom), 0))
    return out


def scene_candidates(folder: Path, split: str) -> dict[Path, tuple[Box, ...]]:
    """Synthetic world: image path (as in its expressions) → the boxes of all the image's objects."""
    return {folder / scene.image: tuple(o.box() for o in scene.objects) for scene in read_scenes(folder, split)}


def as_items(expressions: list[Expression],
             candidates: dict[Path, tuple[Box, ...]] | None = None) -> list[GroundingItem]:
    """Expressions (boxes known) → grounding items, with each image's candidate boxes when given."""
    return [GroundingItem(e.image, e.text, e.box, candidates.get(e.image) if candidates else None) for e in expressions]


@dataclass
class Tally:
    """Per-expression outcomes of the evaluation, aggregated by :meth:`metrics`.

    Attributes:
        pointing: the map's peak in the box; ``center``: the image centre in the box; ``area``: the box's
            area fraction of the image (one entry per expression).
        picked: ALBEF's box choice correct; ``chance``: a random candidate's expected correctness;
            ``splits``: the item's split (one entry per expression with candidates).
    """

    pointing: list[bool] = field(default_factory=list)
    center: list[bool] = field(default_factory=list)
    area: list[float] = field(default_factory=list)
    picked: list[bool] = field(default_factory=list)
    chance: list[float] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """``pointing_acc``, ``center_acc``, ``area_acc``, ``n``; where candidates were known also
        ``box_acc``, ``box_chance_acc``, ``box_n`` and ``box_acc_{split}`` per split the items name."""
        n = len(self.pointing)
        out = {"pointing_acc": 100.0 * sum(self.pointing) / n, "center_acc": 100.0 * sum(self.center) / n,
               "area_acc": 100.0 * sum(self.area) / n, "n": float(n)}
        if self.picked:
            out |= {"box_acc": 100.0 * sum(self.picked) / len(self.picked),
                    "box_chance_acc": 100.0 * sum(self.chance) / len(self.chance), "box_n": float(len(self.picked))}
            for split in sorted({s for s in self.splits if s is not None}):
                hits = [h for h, s in zip(self.picked, self.splits, strict=True) if s == split]
                out[f"box_acc_{split}"] = 100.0 * sum(hits) / len(hits)
        return out


@register("task", "grounding", config=GroundingConfig)
class Grounding(Task):
    """Grad-CAM grounding with pointing and box accuracy (see the module docstring)."""

    def __init__(self, cfg: GroundingConfig) -> None:
        self.cfg = cfg

    def items(self, ctx: TaskContext) -> list[GroundingItem]:
        """The expressions to evaluate (those with a ground-truth box, at most ``max_expressions``)."""
        cfg = self.cfg
        if cfg.format == "refcoco":
            assert cfg.annotations is not None  # checked by the config
            found = read_refcoco(Path(cfg.annotations), Path(cfg.image_root),
                                 detections=Path(cfg.detections) if cfg.detections else None,
                                 instances=Path(cfg.instances) if cfg.instances else None,
                                 refs_json=Path(cfg.refs) if cfg.refs else None)
        elif cfg.annotations:
            found = as_items(read_expressions(Path(cfg.annotations), Path(cfg.image_root)))
        else:
            candidates = (scene_candidates(ctx.source.folder, cfg.split) if isinstance(ctx.source, SyntheticSource)
                          else None)
            found = as_items(ctx.source.referring_expressions(cfg.split), candidates)
        usable = [item for item in found if item.box is not None]
        if not usable:
            raise AnnotationError("no grounding expressions with a ground-truth box to evaluate" + (
                " (give entries a `box`/`bbox`, or `refs` + `instances`)" if found else ""))
        if len(usable) < len(found):
            log.warning("grounding: %d of %d expressions have no ground-truth box and are left out",
                        len(found) - len(usable), len(found))
        return usable[: cfg.max_expressions] if cfg.max_expressions else usable

    def layer(self, ctx: TaskContext) -> int:
        stack = ctx.encoder.fusion_stack()
        count = 0 if stack is None else len(stack.fusion_layers)
        chosen = self.cfg.fusion_layer or min(3, max(count, 1))
        fusion_cross_attention(ctx.encoder, chosen)  # a clear error for encoders without cross-attention
        return chosen

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        itm = ctx.match_head
        if itm is None:
            raise CheckpointError("Grad-CAM grounding differentiates the ITM score: the model needs an objective "
                                  "with a match head (e.g. itm)")
        layer = self.layer(ctx)
        size = ctx.image_size
        transform = eval_transform(size, ctx.data.normalize)
        tally = Tally()
        drawn: list[tuple[Image.Image, Tensor, Box, str, bool]] = []
        items = self.items(ctx)
        for start in progress.track(range(0, len(items), ctx.eval.batch_size), "grounding (Grad-CAM)",
                                    total=len(items), unit="expression",
                                    weight=lambda start: min(ctx.eval.batch_size, len(items) - start)):
            chunk = items[start:start + ctx.eval.batch_size]
            pictures = load_pictures(chunk)
            boxes = [_scaled(item.box, p, size) for item, p in zip(chunk, pictures, strict=True)]
            images = torch.stack([transform(p) for p in pictures]).to(ctx.device)
            ids, mask = ctx.tokenize([item.text for item in chunk])
            maps = gradcam(ctx.encoder, itm, images, ids.to(ctx.device), mask.to(ctx.device), layer).cpu()
            hits = pointing_hits(maps, boxes, size)
            tally.pointing += hits
            tally.center += [b[0] <= size / 2 <= b[2] and b[1] <= size / 2 <= b[3] for b in boxes]
            tally.area += [(b[2] - b[0]) * (b[3] - b[1]) / size**2 for b in boxes]
            score_boxes(tally, chunk, maps, [p.size for p in pictures])
            for item, p, heat, box, hit in zip(chunk, pictures, maps, boxes, hits, strict=True):
                if len(drawn) < self.cfg.overlays:
                    drawn.append((p.resize((size, size), Image.Resampling.BICUBIC), heat, box, item.text, hit))
        if ctx.out_dir is not None and drawn:
            paths = save_overlays(ctx.out_dir / "gradcam", drawn)
            log.info("wrote %d Grad-CAM overlays to %s", len(paths), paths[0].parent)
        return tally.metrics() | {"fusion_layer": float(layer)}


def load_pictures(items: list[GroundingItem]) -> list[Image.Image]:
    """The items' images (RGB); an :class:`AnnotationError` naming the first few missing or corrupt ones."""
    pictures = [load_image(item.image) for item in items]
    missing = [str(item.image) for item, p in zip(items, pictures, strict=True) if p is None]
    if missing:
        raise AnnotationError(f"grounding images missing or corrupt: {', '.join(missing[:5])}")
    return [p for p in pictures if p is not None]


def score_boxes(tally: Tally, items: list[GroundingItem], maps: Tensor, image_sizes: list[tuple[int, int]]) -> None:
    """ALBEF's box choice for the items with candidates (``maps [B, g, g]``, ``image_sizes`` (width, height)
    of the files), recorded in ``tally`` with the random-candidate baseline and the item's split."""
    known = [k for k, item in enumerate(items) if item.candidates]
    if not known:
        return
    picks = select_boxes(maps[known], [items[k].candidates or () for k in known], [image_sizes[k] for k in known])
    for k, pick in zip(known, picks, strict=True):
        item = items[k]
        assert item.candidates is not None and item.box is not None
        tally.picked.append(box_correct(item.candidates[pick], item.box))
        tally.chance.append(chance_accuracy(item.candidates, item.box))
        tally.splits.append(item.split)


def _scaled(box: Box | None, picture: Image.Image, size: int) -> Box:
    """A box in pixels of the image file → pixels of the ``size × size`` model input (clipped)."""
    assert box is not None
    sx, sy = size / picture.width, size / picture.height
    left, top, right, bottom = box
    return (max(0.0, left * sx), max(0.0, top * sy), min(size, right * sx), min(size, bottom * sy))
