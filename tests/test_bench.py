"""``vlkit bench``: the reference FLOP model against the performance notes' figures, vlkit's executed
FLOPs for ALBEF-base against that reference (meta device), and the command's output files."""

from __future__ import annotations

import json

import pytest
import torch

from vlkit.bench.flops import layer_flops, patch_embed_flops, reference_flops
from vlkit.bench.sweep import sweep_markdown
from vlkit.bench.throughput import BenchSettings, count_flops
from vlkit.cli import main
from vlkit.recipe import load_recipe

torch.set_num_threads(1)


@pytest.mark.parametrize(("text_len", "gflops"), [(25, 288.9), (30, 300.1), (40, 322.6)])
def test_albef_reference_flops_match_the_performance_notes(text_len, gflops):
    """performance_notes.md §1.1: 4·ViT + 8·T + 13·F + 4·H(L) + 4·ITC at ALBEF-base, 256 px, queue 65536."""
    recipe = load_recipe("albef/base")
    ref = reference_flops(recipe.encoder, recipe.objectives, text_len, 64)
    assert ref["total"] / 1e9 == pytest.approx(gflops, abs=0.05)
    assert ref["vit"] / 1e9 == pytest.approx(185.6, abs=0.05)  # 62% of the step at L = 30


def test_vlmo_reference_and_vit_cross_check_match_the_notes():
    recipe = load_recipe("vlmo/base")
    assert reference_flops(recipe.encoder, recipe.objectives, 40, 64)["total"] / 1e9 == pytest.approx(663.3, abs=0.05)
    # ViT-B/16 at 224 px: 35.13 GFLOPs forward, as timm's and open_clip's profiles
    vit = 12 * layer_flops(197, 768, 3072) + patch_embed_flops(197, 16, 768)
    assert vit / 1e9 == pytest.approx(35.13, abs=0.01)
    assert reference_flops(load_recipe("dual/tiny").encoder, {}, 30, 8) is None  # no official step


def test_albef_base_executes_at_most_088_of_the_official_steps_flops():
    """Shared image K/V and the masked-only MLM head remove ~12.5% of the official step's work
    (performance notes §1.1: 262.5 of 300.1 GF at L = 30); counted on the meta device."""
    recipe = load_recipe("albef/base", ["data.max_text_len=30"])
    counted = count_flops(recipe, BenchSettings(batch_size=2, text_len=30))
    assert counted["text_len_mean"] == 30
    assert counted["reference_flops_per_sample"] / 1e9 == pytest.approx(300.1, abs=0.05)
    assert 0.80 <= counted["executed_over_reference"] <= 0.88


def test_bench_command_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "albef/tiny", "--steps", "3", "--warmup", "1", "--batch-size", "8", "--profile-steps", "1",
                 "--out", str(out)])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    for key in ("samples_per_s", "step_ms_median", "executed_flops_per_sample", "reference_flops_per_sample", "mfu",
                "peak_mem_bytes", "backend", "device"):
        assert key in result
    assert result["samples_per_s"] > 0 and result["step_ms_p10"] <= result["step_ms_median"] <= result["step_ms_p90"]
    assert result["executed_flops_per_sample"] > 0 and 0 < result["mfu"] < 1.5
    assert result["backend"] == "sdpa" and result["device"] == "cpu" and len(result["step_ms_all"]) == 3
    assert {"phase/forward", "phase/backward", "phase/optimizer", "phase/ema_queue", "objective/itc",
            "objective/itm", "objective/mlm", "teacher"} <= set(result["breakdown_ms"])
    assert "samples/s" in (out / "bench.md").read_text()


def test_bench_sweep_writes_table_and_plots(tmp_path):
    out = tmp_path / "sweep"
    code = main(["bench", "dual/tiny", "--sweep", "--steps", "2", "--warmup", "1", "--sweep-batch-sizes", "2", "4",
                 "--sweep-text-lens", "8", "--sweep-backends", "sdpa", "xformers", "--peak-tflops", "0.1",
                 "--out", str(out)])
    assert code == 0
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["batch_size"] for p in points if p["backend"] == "sdpa"] == [2, 4]
    assert any(p["backend"] == "xformers" and "skipped" in p for p in points)  # no CUDA here
    for name in ("samples_per_s.png", "mfu.png", "sweep.md"):
        assert (out / name).stat().st_size > 0
    assert "(peak 100 GFLOP/s)" in (out / "sweep.md").read_text()
    assert all(isinstance(p["mfu_reliable"], bool) for p in points if "skipped" not in p)


def test_sweep_table_marks_the_points_whose_mfu_cannot_be_trusted():
    point = {"backend": "sdpa", "batch_size": 4, "text_len": 8, "samples_per_s": 10.0, "step_ms_median": 400.0,
             "step_ms_p10": 390.0, "step_ms_p90": 900.0, "mfu": 0.2, "effective_mfu": None,
             "peak_mem_bytes": 2**20, "mfu_reliable": True, "warnings": []}
    noisy = {**point, "batch_size": 8, "mfu_reliable": False, "warnings": ["step times spread widely"]}
    text = sweep_markdown([point, noisy], "vlkit bench dual/tiny --sweep", 2.5e12)
    assert "(peak 2.5 TFLOP/s)" in text
    assert "| sdpa | 4 | 8 | 10.0 | 400.0 (390.0–900.0) | 20.0% | — | 1 MiB |" in text
    assert "| 20.0% (unreliable) | — (unreliable) |" in text
    assert "MFU unreliable at 1 of 2 point(s)" in text and "- sdpa, batch 8, text 8: step times spread widely" in text
