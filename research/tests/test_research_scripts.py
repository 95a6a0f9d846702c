"""The research diagnostics of the binding investigation (research/README.md) run end to end at toy size
(their figures come from the full runs, not from here). Not part of the default test suite:
``python -m pytest research/tests -q`` from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_shape_supervision_then_binding_probe_from_its_tower(tmp_path: Path) -> None:
    data = [f"data.source.root={tmp_path / 'data'}", "data.source.train_images=40", "data.source.val_images=4",
            "data.source.test_images=12"]
    tower = tmp_path / "tower.pt"
    cmd = [sys.executable, str(ROOT / "research" / "shape_supervision.py"), "recipes/albef/tiny.yaml", *data,
           "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--save", str(tower),
           "--save-init", str(tmp_path / "init.pt")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in rows] == [1, 2] and all(0.0 <= r["shape_acc"] <= 1.0 for r in rows)
    assert tower.stat().st_size > 0
    init = torch.load(tmp_path / "init.pt", weights_only=True)
    assert init["format"] == "vlkit-train-state" and init["model"].keys() == {
        f"encoder.visual_encoder.{k}" for k in torch.load(tower, weights_only=True)}
    cmd = [sys.executable, str(ROOT / "research" / "binding_probe.py"), "recipes/albef/tiny.yaml", *data,
           "--image-tower", str(tower), "--steps", "2", "--batch-size", "4", "--eval-every", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
    assert f"image tower from {tower}" in out and "step     2" in out and "swap_acc" in out


def test_binding_sides_probes_a_trained_run(tmp_path: Path) -> None:
    data = [f"data.source.root={tmp_path / 'data'}", "data.source.train_images=40", "data.source.val_images=4",
            "data.source.test_images=12"]
    run = tmp_path / "run"
    train = [sys.executable, "-m", "vlkit", "train", "recipes/albef/tiny.yaml", *data, "train.steps=2",
             "train.batch_size=8", "eval.k_test=4", "--out", str(run)]
    subprocess.run(train, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT)
    cmd = [sys.executable, str(ROOT / "research" / "binding_sides.py"), str(run), "--probe-steps", "3"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {"text_side", "text_side_bag_of_words", "mlm_swap", "image_side"}
    assert set(result["mlm_swap"]) == {"attribute", "relation"}
    assert all(0.0 <= result[k] <= 1.0 for k in ("text_side", "text_side_bag_of_words", "image_side"))


def test_binding_oracle_trains_on_object_tokens_cells_and_pixels(tmp_path: Path) -> None:
    data = [f"data.source.root={tmp_path / 'data'}", "data.source.train_images=40", "data.source.val_images=4",
            "data.source.test_images=12"]
    options = {"oracle": ["--xy", "linear", "--relations-only", "--ground-weight", "1"],
               "grid": ["--swap-negatives", "--grid-pos", "sincos", "--grid-layers", "1"], "pixels": []}
    for image, extra in options.items():
        cmd = [sys.executable, str(ROOT / "research" / "binding_oracle.py"), "recipes/albef/tiny.yaml", *data,
               "--image", image, "--text-mixing", "conv", "--itm-weight", "1", "--steps", "2", "--batch-size", "4",
               "--eval-every", "1", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
        steps = [line for line in out.splitlines() if line.startswith("step")]
        assert len(steps) == 2 and all("itm_loss" in s and "mlm_swap attr" in s and "itm_swap attr" in s
                                       for s in steps), out
        assert ("relations only:" in out) == ("--relations-only" in extra), out
        assert all(("box_iou" in s) == ("--ground-weight" in extra) for s in steps), out


def test_dense_tower_then_binding_oracle_on_its_frozen_patches(tmp_path: Path) -> None:
    data = [f"data.source.root={tmp_path / 'data'}", "data.source.train_images=40", "data.source.val_images=4",
            "data.source.test_images=12"]
    tower = tmp_path / "dense.pt"
    cmd = [sys.executable, str(ROOT / "research" / "shape_supervision.py"), "recipes/albef/tiny.yaml", *data,
           "--dense", "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--save", str(tower)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in rows] == [1, 2] and all(0.0 <= r["color_acc"] <= 1.0 for r in rows)
    cmd = [sys.executable, str(ROOT / "research" / "binding_oracle.py"), "recipes/albef/tiny.yaml", *data,
           "--image", "pixels", "--image-tower", str(tower), "--freeze-tower", "--text-mixing", "conv",
           "--itm-weight", "1", "--steps", "1", "--batch-size", "4", "--eval-every", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT).stdout
    assert "itm_swap attr" in out


def test_scene_grid_labels_the_cells_an_object_covers() -> None:
    import binding_oracle as module  # research/ is on sys.path (conftest.py)

    scene = {"objects": [{"shape": "circle", "color": "red", "x": 20, "y": 40, "extent": 16}]}
    cells, _ = module.scene_grid([scene], 64, 8)  # cell centres 4, 12, ..., 60: |centre - 20| <= 8 → 12, 20, 28
    grid = cells.view(8, 8, 2)
    covered = grid[..., 0] >= 0
    assert covered.nonzero().tolist() == [[r, c] for r in (4, 5) for c in (1, 2, 3)]
    assert grid[4, 1].tolist() == [list(module.COLORS).index("red"), module.SHAPES.index("circle")]
    assert (grid[~covered] == -1).all()
