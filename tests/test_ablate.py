"""``vlkit ablate``: a grid of variants × seeds, validated before training, resumable, with its report."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from vlkit.ablate.grid import GridError, load_grid
from vlkit.ablate.report import markdown
from vlkit.build import build_encoder
from vlkit.cli import main

torch.set_num_threads(1)


def write_grid(tmp_path, small_data: list[str], variants: str, extra: str = "") -> str:
    overrides = "\n".join(f"  - {o}" for o in [*small_data, f"data.source.root={tmp_path / 'data'}",
                                                 "train.batch_size=8", "train.steps=2", "train.log_every=1",
                                                 "train.cpu_threads=1", "eval.batch_size=8", "eval.k_test=4"])
    path = tmp_path / "grid.yaml"
    path.write_text(f"description: tiny test grid\nbase: dual/tiny\noverrides:\n{overrides}\n"
                    f"metrics: [txt_r1, r_mean]\n{extra}variants:\n{variants}")
    return str(path)


@pytest.mark.slow
def test_grid_runs_variants_and_seeds_then_reports(tmp_path, small_data):
    grid = write_grid(tmp_path, small_data, "  plain: {}\n  smooth: {objectives.itc.label_smoothing: 0.0}\n",
                      "seeds: [0, 1]\n")
    out = tmp_path / "ablation"
    assert main(["ablate", grid, "--out", str(out), "--no-progress"]) == 0
    table = (out / "results.md").read_text()
    assert "| plain | 2 |" in table and "| smooth | 2 |" in table and " ± " in table
    # the two variants are the same recipe (label_smoothing 0.0 is the default): nothing stands out of the spread
    assert "**" not in table and "within the seeds' spread" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["seed"]) for r in rows] == [("plain", "0"), ("plain", "1"), ("smooth", "0"),
                                                          ("smooth", "1")]
    for name in ("bars_txt_r1.png", "bars_r_mean.png", "curves_loss.png"):
        assert (out / name).stat().st_size > 0
    finished = (out / "runs" / "plain" / "seed1" / "metrics.json").stat().st_mtime_ns
    # a second invocation skips finished runs; --report redraws from them
    assert main(["ablate", grid, "--out", str(out), "--no-progress"]) == 0
    assert (out / "runs" / "plain" / "seed1" / "metrics.json").stat().st_mtime_ns == finished
    (out / "results.md").unlink()
    assert main(["ablate", "--report", str(out)]) == 0
    assert (out / "results.md").read_text() == table
    assert json.loads((out / "grid.json").read_text())["runs"] == {"plain": [0, 1], "smooth": [0, 1]}


def test_a_bad_variant_key_stops_the_grid_before_training(tmp_path, small_data):
    grid = write_grid(tmp_path, small_data, "  good: {}\n  bad: {objectives.itc.label_smothing: 0.1}\n")
    with pytest.raises(GridError, match=r"variant `bad`.*label_smothing.*label_smoothing"):
        load_grid(grid)
    assert main(["ablate", grid, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_variant_may_start_from_another_recipe(tmp_path, small_data):
    grid = write_grid(tmp_path, small_data, "  dual: {}\n  albef: {base: albef/tiny, objectives.mlm: null}\n")
    loaded = load_grid(grid)
    assert loaded.recipe("dual").encoder.type == "dual"
    albef = loaded.recipe("albef")
    assert albef.encoder.type == "albef" and "mlm" not in albef.objectives and albef.train.steps == 2
    shipped = load_grid("recipes/ablations/encoders.yaml")
    recipes = {v: shipped.recipe(v) for v in shipped.variants}
    assert [r.encoder.type for r in recipes.values()] == ["albef", "mome", "dual"]
    counts = [sum(p.numel() for p in build_encoder(r.encoder, device="meta").parameters()) for r in recipes.values()]
    assert max(counts) / min(counts) < 1.05, counts  # matched parameter counts


def test_parameter_counts_are_shown_whole_and_never_marked_best():
    grid = {"description": "d", "command": "vlkit ablate g.yaml", "runs": {"big": [1, 2], "small": [1, 2]}}
    results = {"big": {1: {"r_mean": 40.0, "encoder_parameters": 524128.0}, 2: {"r_mean": 42.0,
                                                                                 "encoder_parameters": 524128.0}},
               "small": {1: {"r_mean": 30.0, "encoder_parameters": 316640.0}, 2: {"r_mean": 34.0,
                                                                                  "encoder_parameters": 316640.0}}}
    rows = markdown(grid, results, ["r_mean", "encoder_parameters"]).splitlines()
    assert "| big | 2 | **41.00 ± 1.41** | 524,128 |" in rows
    assert "| small | 2 | 32.00 ± 2.83 | 316,640 |" in rows


def test_shipped_vlmo_grid_changes_only_what_each_variant_names():
    shipped = load_grid("recipes/ablations/vlmo_experts.yaml")
    mome, local = shipped.recipe("mome").to_dict(), shipped.recipe("in_batch_hard").to_dict()
    assert mome["objectives"]["itm"]["negatives"] == {"type": "global_hard", "exclude": "diagonal", "ramp_steps": 4000,
                                                      "gather": "inputs"}
    local["objectives"]["itm"]["negatives"]["type"] = "global_hard"
    local["objectives"]["itm"]["negatives"]["gather"] = "inputs"
    assert local == mome  # the same schedule of hardness: only the sampler differs
