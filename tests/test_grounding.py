"""Grad-CAM grounding: the recording attention path computes what the fused kernels compute, maps ignore
padding, pointing and ALBEF's box choice are scored as defined, and the task writes overlays and metrics
(box accuracy on the synthetic world and on RefCOCO+-format files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlkit.build import build_encoder
from vlkit.data.synthetic import read_scenes
from vlkit.eval.grounding import (
    box_correct,
    box_iou,
    box_scores,
    chance_accuracy,
    fusion_cross_attention,
    gradcam,
    pointing_hits,
    recorded_attention,
    select_boxes,
)
from vlkit.heads.itm import ITMHead
from vlkit.recipe import load_recipe
from vlkit.schema import ConfigError
from vlkit.tasks.grounding import GroundingConfig


@pytest.fixture(scope="module")
def albef():
    torch.manual_seed(0)
    encoder = build_encoder(load_recipe("albef/tiny").encoder).eval()
    return encoder, ITMHead(encoder.width)


def test_recording_attention_matches_the_fused_kernel(albef) -> None:
    encoder, _ = albef
    images, ids = torch.randn(3, 3, 64, 64), torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        plain = encoder.fuse(encoder.encode_image(images), encoder.encode_text(ids, mask)).text
        with recorded_attention(fusion_cross_attention(encoder, 2)) as probe:
            probed = encoder.fuse(encoder.encode_image(images), encoder.encode_text(ids, mask)).text
    torch.testing.assert_close(probed, plain, rtol=1e-5, atol=1e-5)
    assert probe[0].shape == (3, encoder.text_encoder.layers[0].attention.heads, 7, 1 + 64)  # 8×8 patches
    torch.testing.assert_close(probe[0].sum(-1), torch.ones(3, probe[0].shape[1], 7))
    assert fusion_cross_attention(encoder, 2).probe is None  # restored after the block


def test_gradcam_maps_are_non_negative_and_ignore_padding(albef) -> None:
    encoder, head = albef
    images, ids = torch.randn(2, 3, 64, 64), torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    maps = gradcam(encoder, head, images, ids, mask, fusion_layer=2)
    assert maps.shape == (2, 8, 8) and (maps >= 0).all() and maps.sum() > 0
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(gradcam(encoder, head, images, padded_ids, padded_mask, fusion_layer=2), maps,
                               rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in encoder.parameters())  # no gradients left on the weights
    with pytest.raises(ValueError, match="outside the encoder's 2 fusion layers"):
        gradcam(encoder, head, images, ids, mask, fusion_layer=3)


def test_pointing_hits_use_the_upsampled_peak() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 3] = 1.0  # top-right cell of a 4×4 grid → around pixel (28, 4) of a 32-px image
    maps[1, 3, 0] = 1.0  # bottom-left cell
    boxes = [(20.0, 0.0, 32.0, 10.0), (20.0, 0.0, 32.0, 10.0)]
    assert pointing_hits(maps, boxes, 32) == [True, False]


def test_box_iou_and_the_accuracy_rule() -> None:
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)  # overlap 1, union 3
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(0.25)  # nested
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0 and box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # apart, touching
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty union
    assert box_correct((0, 0, 2, 1), (0, 0, 1, 1)) and not box_correct((0, 0, 3, 1), (0, 0, 1, 1))  # IoU 0.5 counts
    truth = (0.0, 0.0, 10.0, 10.0)
    assert chance_accuracy([truth, (1.0, 0.0, 11.0, 10.0), (20.0, 20.0, 30.0, 30.0)], truth) == pytest.approx(2 / 3)


def test_select_boxes_picks_the_box_the_map_concentrates_in() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 1.0  # row 1, column 2 of the grid: x in [40, 60), y in [10, 20) of an 80 × 40 (w × h) image
    inside, transposed = (40.0, 10.0, 60.0, 20.0), (20.0, 20.0, 30.0, 40.0)  # where it would be read as 40 × 80
    candidates = [[(0.0, 0.0, 20.0, 40.0), transposed, inside, (60.0, 20.0, 80.0, 40.0)]]
    assert select_boxes(maps, candidates, [(80, 40)]) == [2]
    assert select_boxes(maps, candidates, [(40, 80)]) == [1]  # sizes are (width, height)
    two = torch.stack([maps[0], maps[0].flip(1)])  # the second peaks at column 1: x in [20, 40)
    assert select_boxes(two, [candidates[0], [inside, (20.0, 10.0, 40.0, 20.0)]], [(80, 40), (80, 40)]) == [2, 1]
    with pytest.raises(ValueError, match="at least one candidate"):
        select_boxes(maps, [[]], [(80, 40)])


def test_select_boxes_normalizes_by_the_square_root_of_the_area() -> None:
    heat = torch.zeros(8, 8)  # an 8 × 8 image: upsampling is the identity, so the sums below are exact
    heat[0:2, 0:2] = 3.0  # small, dense: sum 12, area 4
    heat[2:8, 2:8] = 1.2  # large, fainter: sum 43.2, area 36
    small, large, whole = (0.0, 0.0, 2.0, 2.0), (2.0, 2.0, 8.0, 8.0), (0.0, 0.0, 8.0, 8.0)  # whole: sum 55.2, area 64
    torch.testing.assert_close(box_scores(heat, [small, large, whole]),
                               torch.tensor([12 / 2, 43.2 / 6, 55.2 / 8], dtype=torch.float64))
    maps, boxes, sizes = heat[None], [[small, large, whole]], [(8, 8)]
    assert select_boxes(maps, boxes, sizes) == [1]  # ALBEF: sum / sqrt(area) → 6, 7.2, 6.9
    assert select_boxes(maps, boxes, sizes, alpha=0.0) == [2]  # the plain sum prefers the whole image
    assert select_boxes(maps, boxes, sizes, alpha=1.0) == [0]  # the mean prefers the small dense box
    assert select_boxes(maps, [[(3.0, 3.0, 3.0, 5.0), small]], sizes) == [1]  # a box of no area is never picked


def test_grounding_config_rules() -> None:
    with pytest.raises(ConfigError, match="read with `format: refcoco`"):
        GroundingConfig(detections="dets.json")
    with pytest.raises(ConfigError, match="reads the expressions from `annotations`"):
        GroundingConfig(format="refcoco")
    with pytest.raises(ConfigError, match="need both `refs` and `instances`") as err:
        GroundingConfig(format="refcoco", annotations="refcoco+_val.json", refs="refs.json")
    assert err.value.key == "instances"


def refcoco_files(folder: Path, data: Path) -> tuple[str, list[float]]:
    """RefCOCO+-format files over the synthetic test images, refs alternately in testA and testB (the ground
    truth and the detections are the scene's objects, COCO xywh; one expression without a box, ref 1 without
    detections) → the task override and each scored expression's chance (1 / objects)."""
    entries, refs, annotations, dets, chance = [], [], [], {}, []
    for ref_id, scene in enumerate(read_scenes(data, "test")):
        obj = scene.objects[0]
        entries.append({"image": scene.image, "text": f"the {obj.color} {obj.shape}", "ref_id": ref_id})
        refs.append({"ref_id": ref_id, "ann_id": 1000 + ref_id, "image_id": scene.image_id,
                     "split": ("testA", "testB")[ref_id % 2], "sentences": [{"sent": entries[-1]["text"]}]})
        left, top, right, bottom = obj.box()
        annotations.append({"id": 1000 + ref_id, "bbox": [left, top, right - left, bottom - top]})
        if ref_id != 1:
            dets[str(ref_id)] = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in (o.box() for o in scene.objects)]
            chance.append(1 / len(scene.objects))
    entries.append({"image": entries[0]["image"], "text": "no box anywhere", "ref_id": 999})
    for name, content in [("refs.json", refs), ("instances.json", {"annotations": annotations}), ("dets.json", dets),
                          ("val.json", entries)]:
        (folder / name).write_text(json.dumps(content))
    task = (f"task={{type: grounding, format: refcoco, annotations: '{folder / 'val.json'}', image_root: '{data}', "
            f"detections: '{folder / 'dets.json'}', refs: '{folder / 'refs.json'}', "
            f"instances: '{folder / 'instances.json'}', overlays: 0}}")
    return task, chance


def test_grounding_task_writes_overlays_and_needs_cross_attention(tmp_path: Path, small_data: list[str]) -> None:
    from vlkit.cli import main
    from vlkit.data.synthetic.grounding import referring_expressions
    from vlkit.eval.checkpoint_eval import task_metrics
    from vlkit.train.pretrain import Pretraining, run_pretraining

    args = [*small_data, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=2",
            "eval.batch_size=8", "eval.k_test=4"]
    run_pretraining(load_recipe("albef/tiny", args), tmp_path / "run", progress=False)
    out = tmp_path / "ground"
    assert main(["eval", "albef/tiny", *args, "task={type: grounding, overlays: 3}", "--checkpoint",
                 str(tmp_path / "run"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] > 0 and 0 <= metrics["pointing_acc"] <= 100 and metrics["fusion_layer"] == 2
    assert 0 < metrics["area_acc"] < 100
    assert sorted(p.suffix for p in (out / "gradcam").iterdir()) == [".png"] * 3
    # box accuracy: the candidates are every object of the image, only the named one counts
    (data,) = (tmp_path / "data").glob("*/scenes_test.json")
    data = data.parent
    objects = {s.image: len(s.objects) for s in read_scenes(data, "test")}
    expected = [1 / objects[e.image.relative_to(data).as_posix()] for e in referring_expressions(data, "test")]
    assert metrics["box_n"] == metrics["n"] == len(expected)
    assert metrics["box_chance_acc"] == pytest.approx(100 * sum(expected) / len(expected))
    assert metrics["box_acc"] * metrics["n"] / 100 == pytest.approx(round(metrics["box_acc"] * metrics["n"] / 100))
    assert not any(k.startswith("box_acc_") for k in metrics)  # no REFER splits on the synthetic world

    (tmp_path / "refcoco").mkdir()
    task, chance = refcoco_files(tmp_path / "refcoco", data)
    assert main(["eval", "albef/tiny", *args, task, "--checkpoint", str(tmp_path / "run"), "--out",
                 str(tmp_path / "refcoco_out")]) == 0
    found = json.loads((tmp_path / "refcoco_out" / "metrics.json").read_text())
    assert found["n"] == len(objects) and found["box_n"] == len(objects) - 1  # the box-less expression left out
    assert {k for k in found if k.startswith("box_acc_")} == {"box_acc_testA", "box_acc_testB"}
    assert found["box_chance_acc"] == pytest.approx(100 * sum(chance) / len(chance))
    per_split = [found["box_acc_testA"] * ((len(objects) + 1) // 2), found["box_acc_testB"] * (len(objects) // 2 - 1)]
    assert found["box_acc"] == pytest.approx(sum(per_split) / found["box_n"])

    recipe = load_recipe("vlmo/tiny", [*args, "task={type: grounding}"])
    run = Pretraining(recipe, tmp_path / "vlmo", train_data=False)
    with pytest.raises(ValueError, match="reads cross-attention"):
        task_metrics(run, recipe)


def test_referring_expressions_name_unique_objects(tmp_path: Path) -> None:
    from vlkit.data.synthetic import SynthConfig, ensure, read_scenes
    from vlkit.data.synthetic.grounding import referring_expressions

    folder = ensure(tmp_path, SynthConfig(train_images=4, val_images=2, test_images=30))
    scenes = {s.image: s for s in read_scenes(folder, "test")}
    found = referring_expressions(folder, "test")
    assert found
    for e in found:
        scene = scenes[e.image.relative_to(folder).as_posix()]
        named = [o for o in scene.objects if e.text == f"the {o.color} {o.shape}"]
        assert len(named) == 1 and named[0].box() == e.box
