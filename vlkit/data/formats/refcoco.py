"""RefCOCO+-style referring expressions (ALBEF's grounding evaluation data), read from JSON only.

ALBEF evaluates weakly supervised grounding on RefCOCO+ with

- ``refcoco+_{val,test}.json``: its pre-processed expression lists, entries ``{"image", "text",
  "ref_id"}`` (``image`` relative to the COCO image folder);
- ``dets.json``: ``{str(ref_id): [[x, y, w, h, ...], ...]}``, the MAttNet detection boxes of each
  expression's image (COCO ``xywh`` in image pixels) — the candidates among which a box is picked;
- the REFER API's ``refs(unc).p`` and COCO ``instances.json`` for the ground-truth boxes
  (``ref_id`` → ``ann_id`` → ``annotations[].bbox``); ``cocos.json`` is not needed.

vlkit never unpickles data (a pickle can run code), so convert ``refs(unc).p`` to JSON once yourself,
in an environment you trust::

    import json, pickle
    refs = pickle.load(open("refcoco+/refs(unc).p", "rb"))  # a list of dicts of ints, strings and lists
    json.dump(refs, open("refcoco+/refs.json", "w"))

Ground-truth boxes come from, in this order: an entry's ``box`` ``[left, top, right, bottom]`` (vlkit's
simple grounding format), an entry's ``bbox`` ``[x, y, w, h]`` (COCO), or ``refs_json`` + ``instances``
via the entry's ``ref_id``. Every box of a :class:`GroundingItem` is ``(left, top, right, bottom)`` in
pixels of the image file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlkit.data.json_dataset import MAX_LOGGED, AnnotationError, read_annotation_list
from vlkit.data.safe_io import Unusable, read_json_bounded, unicode_problem

log = logging.getLogger("vlkit.data")

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels of the image file."""


@dataclass(frozen=True)
class GroundingItem:
    """One referring expression.

    Attributes:
        image: the image file.
        text: the expression.
        box: the referred object's ground-truth box (image pixels); None when unknown.
        candidates: boxes to pick from (e.g. MAttNet detections); None when none are known.
        ref_id: the REFER ref id, when the entry has one.
        split: the REFER split (``val``, ``testA``, ``testB``, ...): the entry's ``split``, else its ref's.
    """

    image: Path
    text: str
    box: Box | None
    candidates: tuple[Box, ...] | None = None
    ref_id: int | None = None
    split: str | None = None


@dataclass
class RefcocoData:
    """What :func:`load_refcoco` read.

    Attributes:
        items: usable expressions, in file order.
        skipped: malformed entries skipped.
        without_box: items whose ground-truth box is unknown (no ``box``/``bbox``, ref or annotation).
        without_candidates: items without detections, when ``detections`` was given.
    """

    items: list[GroundingItem] = field(default_factory=list)
    skipped: int = 0
    without_box: int = 0
    without_candidates: int = 0


def xywh_to_ltrb(box: list[float] | tuple[float, ...]) -> Box:
    """COCO ``[x, y, w, h]`` → ``(left, top, right, bottom)``."""
    x, y, w, h = (float(c) for c in box[:4])
    return (x, y, x + w, y + h)


def _numbers(value: Any, count: int) -> bool:
    """Whether ``value`` is a list of at least ``count`` numbers (first ``count`` checked; bools excluded)."""
    return (isinstance(value, list | tuple) and len(value) >= count
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in value[:count]))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_json(path: Path, what: str) -> Any:
    """A JSON file (a regular file within the annotation size limit), or an :class:`AnnotationError`
    naming it and ``what`` it should hold."""
    try:
        return read_json_bounded(path)
    except Unusable as err:
        raise AnnotationError(f"{path}: cannot read {what}: {err}") from None


def read_detections(path: Path) -> dict[str, tuple[Box, ...]]:
    """``dets.json`` → ``{str(ref_id): boxes}`` (``[x, y, w, h, ...]`` → ltrb; malformed boxes dropped, logged)."""
    data = read_json(path, "detections ({ref_id: [[x, y, w, h], ...]})")
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON mapping ref_id → [[x, y, w, h], ...]")
    out, bad = {}, 0
    for key, boxes in data.items():
        good = [b for b in boxes if _numbers(b, 4) and b[2] > 0 and b[3] > 0] if isinstance(boxes, list) else []
        bad += (len(boxes) if isinstance(boxes, list) else 1) - len(good)
        out[str(key)] = tuple(xywh_to_ltrb(b) for b in good)
    if bad:
        log.warning("%s: dropped %d malformed detection boxes (expected [x, y, w, h] with w, h > 0)", path, bad)
    return out


def read_instance_boxes(path: Path) -> dict[int, Box]:
    """COCO ``instances.json`` → ``{annotation id: box}`` (ltrb)."""
    data = read_json(path, "COCO instances")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise AnnotationError(f"{path}: expected COCO instances with an `annotations` list")
    return {a["id"]: xywh_to_ltrb(a["bbox"]) for a in annotations
            if isinstance(a, dict) and _is_int(a.get("id")) and _numbers(a.get("bbox"), 4)}


def read_refs(path: Path) -> dict[int, dict[str, Any]]:
    """A JSON list of REFER refs → ``{ref_id: ref}`` (refs without an integer ``ref_id`` dropped)."""
    refs = read_annotation_list(path, "REFER ref {ref_id, ann_id, image_id, split, sentences}")
    return {r["ref_id"]: r for r in refs if isinstance(r, dict) and _is_int(r.get("ref_id"))}


def entry_problem(item: Any) -> str | None:
    """Why an expression entry is unusable, or None."""
    if not isinstance(item, dict):
        return f"not a mapping but {type(item).__name__}"
    if not isinstance(item.get("image"), str) or not item["image"]:
        return "no `image` path"
    if not isinstance(item.get("text"), str) or not item["text"].strip():
        return "no `text`"
    if (problem := unicode_problem(item["text"])) is not None:
        return f"the `text` is {problem}"
    if "box" in item and not (_numbers(item["box"], 4) and len(item["box"]) == 4
                              and item["box"][2] > item["box"][0] and item["box"][3] > item["box"][1]):
        return "`box` is not [left, top, right, bottom] with right > left, bottom > top"
    if "bbox" in item and not (_numbers(item["bbox"], 4) and item["bbox"][2] > 0 and item["bbox"][3] > 0):
        return "`bbox` is not [x, y, w, h] with w, h > 0"
    if "ref_id" in item and not _is_int(item["ref_id"]):
        return "`ref_id` is not an integer"
    return None


def _ground_truth(item: dict[str, Any], ref: dict[str, Any] | None, boxes: dict[int, Box]) -> Box | None:
    """The entry's box: its ``box``, its ``bbox``, or its ref's annotation's (None when unknown)."""
    if "box" in item:
        return tuple(float(c) for c in item["box"])  # type: ignore[return-value]
    if "bbox" in item:
        return xywh_to_ltrb(item["bbox"])
    return boxes.get(ref["ann_id"]) if ref is not None and _is_int(ref.get("ann_id")) else None


def load_refcoco(annotations: Path, image_root: Path, *, detections: Path | None = None,
                 instances: Path | None = None, refs_json: Path | None = None) -> RefcocoData:
    """Read RefCOCO+-style expressions (see the module docstring) with counts of what was missing.

    Args:
        annotations: a JSON list of ``{"image", "text", "ref_id"?, "box"?, "bbox"?, "split"?}``.
        image_root: folder the ``image`` paths are relative to.
        detections: ``dets.json`` (``{str(ref_id): [[x, y, w, h], ...]}``): the candidate boxes.
        instances: COCO ``instances.json``; needed with ``refs_json``.
        refs_json: REFER refs as a JSON list (converted from ``refs(unc).p``, see the module docstring).

    Malformed entries (see :func:`entry_problem`) are skipped, counted and the first few logged; a file
    whose every entry is malformed is an :class:`AnnotationError`, as is any file that cannot be read.
    """
    if (refs_json is None) != (instances is None):
        raise AnnotationError("ground-truth boxes from REFER refs need both `refs` (refs as JSON) and `instances` "
                              "(COCO instances.json)")
    items = read_annotation_list(annotations, '{"image", "text", "ref_id"}')
    refs = read_refs(refs_json) if refs_json is not None else {}
    boxes = read_instance_boxes(instances) if instances is not None else {}
    dets = read_detections(detections) if detections is not None else None
    data, bad = RefcocoData(), []
    for index, item in enumerate(items):
        problem = entry_problem(item)
        if problem is not None:
            bad.append(f"entry {index}: {problem}")
            continue
        ref_id = item.get("ref_id")
        ref = refs.get(ref_id) if ref_id is not None else None
        box = _ground_truth(item, ref, boxes)
        candidates = dets.get(str(ref_id)) if dets is not None and ref_id is not None else None
        split = item.get("split") if isinstance(item.get("split"), str) else (ref or {}).get("split")
        data.without_box += box is None
        data.without_candidates += dets is not None and not candidates
        data.items.append(GroundingItem(Path(image_root) / item["image"], item["text"], box,
                                        candidates or None, ref_id, split if isinstance(split, str) else None))
    data.skipped = len(bad)
    if bad:
        log.warning("%s: skipped %d of %d grounding entries (%s%s)", annotations, len(bad), len(items),
                    "; ".join(bad[:MAX_LOGGED]), "; ..." if len(bad) > MAX_LOGGED else "")
        if not data.items:
            raise AnnotationError(f"{annotations}: none of its {len(items)} entries is usable; expected "
                                  '{"image", "text", "ref_id"} (+ "box" or "bbox"): ' + "; ".join(bad[:MAX_LOGGED]))
    if data.without_box:
        log.warning("%s: %d of %d expressions have no ground-truth box (give `box`/`bbox`, or refs + instances)",
                    annotations, data.without_box, len(data.items))
    if data.without_candidates:
        log.warning("%s: %d of %d expressions have no detections in %s", annotations, data.without_candidates,
                    len(data.items), detections)
    return data


def read_refcoco(annotations: Path, image_root: Path, *, detections: Path | None = None,
                 instances: Path | None = None, refs_json: Path | None = None) -> list[GroundingItem]:
    """The expressions of :func:`load_refcoco` (the counts are logged)."""
    return load_refcoco(annotations, image_root, detections=detections, instances=instances,
                        refs_json=refs_json).items
