"""RefCOCO+-style grounding data from JSON only: boxes from entries or REFER refs + COCO instances (xywh →
ltrb), detections as candidates, malformed entries skipped and counted, unreadable files named."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from vlkit.data.formats.refcoco import GroundingItem, load_refcoco, read_refcoco, xywh_to_ltrb
from vlkit.data.json_dataset import AnnotationError

GOOD: list[Any] = [
    {"image": "a.jpg", "text": "left dog", "ref_id": 1},  # box from refs + instances (split testA)
    {"image": "b.jpg", "text": "man", "box": [1, 2, 11, 22], "ref_id": 2, "split": "val"},  # own box and split
    {"image": "c.jpg", "text": "cat", "bbox": [5, 5, 10, 20]},  # COCO xywh, no ref: no candidates
    {"image": "d.jpg", "text": "the other one", "ref_id": 99},  # unknown ref: no box, no detections
]
BAD: list[Any] = [
    "not a mapping",
    {"image": "e.jpg"},  # no text
    {"image": "f.jpg", "text": "y", "box": [0, 0, -1, 3]},  # right < left
    {"image": "g.jpg", "text": "z", "ref_id": "7"},  # ref_id not an integer
    {"image": "", "text": "q"},  # no image
    {"image": "h.jpg", "text": "w", "bbox": [0, 0, 0, 5]},  # zero width
]
REFS: list[Any] = [
    {"ref_id": 1, "ann_id": 10, "image_id": 100, "split": "testA", "sentences": [{"sent": "left dog"}]},
    {"ref_id": 2, "ann_id": 20, "image_id": 101, "split": "testB", "sentences": [{"sent": "man"}]},
    "junk",
]
INSTANCES = {"images": [], "categories": [], "annotations": [
    {"id": 10, "image_id": 100, "bbox": [10, 20, 30, 40], "category_id": 1},
    {"id": 20, "image_id": 101, "bbox": [0, 0, 1, 1], "category_id": 1},
    {"id": 30, "image_id": 101, "bbox": "broken"},
]}
DETS = {"1": [[10, 20, 30, 40, 0.9], [0, 0, 5, 5], [1, 2, "x", 4], [0, 0, 0, 3]], "2": [[1, 2, 10, 20]]}


def write(folder: Path, name: str, data: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"annotations": write(tmp_path, "refcoco+_test.json", [BAD[0], GOOD[0], *BAD[1:4], *GOOD[1:], *BAD[4:]]),
            "refs_json": write(tmp_path, "refs.json", REFS), "instances": write(tmp_path, "instances.json", INSTANCES),
            "detections": write(tmp_path, "dets.json", DETS)}


def test_boxes_from_entries_refs_and_instances_with_detections(files: dict[str, Path], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "coco"
    with caplog.at_level(logging.WARNING, logger="vlkit.data"):
        data = load_refcoco(files["annotations"], root, detections=files["detections"], instances=files["instances"],
                            refs_json=files["refs_json"])
    assert data.items == [
        GroundingItem(root / "a.jpg", "left dog", (10.0, 20.0, 40.0, 60.0),
                      ((10.0, 20.0, 40.0, 60.0), (0.0, 0.0, 5.0, 5.0)), 1, "testA"),
        GroundingItem(root / "b.jpg", "man", (1.0, 2.0, 11.0, 22.0), ((1.0, 2.0, 11.0, 22.0),), 2, "val"),
        GroundingItem(root / "c.jpg", "cat", (5.0, 5.0, 15.0, 25.0), None, None, None),
        GroundingItem(root / "d.jpg", "the other one", None, None, 99, None),
    ]
    assert (data.skipped, data.without_box, data.without_candidates) == (6, 1, 2)
    logged = caplog.text
    assert "skipped 6 of 10 grounding entries" in logged and "entry 0: not a mapping but str" in logged
    assert "dropped 2 malformed detection boxes" in logged and "1 of 4 expressions have no ground-truth box" in logged
    assert read_refcoco(files["annotations"], root, detections=files["detections"], instances=files["instances"],
                        refs_json=files["refs_json"]) == data.items


def test_entry_boxes_alone(files: dict[str, Path], tmp_path: Path) -> None:
    items = read_refcoco(files["annotations"], tmp_path)
    assert [i.box for i in items] == [None, (1.0, 2.0, 11.0, 22.0), (5.0, 5.0, 15.0, 25.0), None]
    assert all(i.candidates is None for i in items)
    assert xywh_to_ltrb([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)


def test_unreadable_or_incomplete_files_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="missing.json: cannot read annotations"):
        read_refcoco(tmp_path / "missing.json", tmp_path)
    with pytest.raises(AnnotationError, match="nodets.json: cannot read detections"):
        read_refcoco(files["annotations"], tmp_path, detections=tmp_path / "nodets.json")
    with pytest.raises(AnnotationError, match="noinst.json: cannot read COCO instances"):
        read_refcoco(files["annotations"], tmp_path, instances=tmp_path / "noinst.json", refs_json=files["refs_json"])
    with pytest.raises(AnnotationError, match="need both `refs`"):
        read_refcoco(files["annotations"], tmp_path, refs_json=files["refs_json"])
    with pytest.raises(AnnotationError, match="an `annotations` list"):
        read_refcoco(files["annotations"], tmp_path, instances=write(tmp_path, "i.json", {"images": []}),
                     refs_json=files["refs_json"])
    with pytest.raises(AnnotationError, match="mapping ref_id"):
        read_refcoco(files["annotations"], tmp_path, detections=write(tmp_path, "d.json", [[0, 0, 1, 1]]))
    with pytest.raises(AnnotationError, match="none of its 6 entries is usable"):
        read_refcoco(write(tmp_path, "bad.json", BAD), tmp_path)
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        read_refcoco(write(tmp_path, "dict.json", {"image": "a.jpg"}), tmp_path)
