"""The trainer on small synthetic data: output contract, exact resume, guards, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.train.trainer import NonFiniteLoss
from vlkit.weights import checkpoints as ckpt

ROOT = Path(__file__).resolve().parent.parent


def test_output_contract_and_metrics(tmp_path, small_recipe):
    out = tmp_path / "run"
    metrics = run_pretraining(small_recipe(tmp_path, "albef/tiny", "train.steps=4", "train.ckpt_every=2"), out,
                              progress=False)
    assert (out / "recipe.yaml").is_file() and load_recipe(out / "recipe.yaml").train.steps == 4
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [2, 4]  # keep_last = 2
    assert any((out / "tb").iterdir())
    written = json.loads((out / "metrics.json").read_text())
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "n_images", "n_texts",
                "swap_acc_itm", "swap_acc_itc"):
        assert key in written and key in metrics
    assert written["n_images"] == 8 and written["n_texts"] == 40 and written["steps"] == 4
    report = (out / "report.md").read_text()  # final metrics and the curves, to look at
    assert f"| **r_mean** | {written['r_mean']:.4g} |" in report and "![training curves](curves.png)" in report
    assert (out / "curves.png").stat().st_size > 0 and "`loss/total`" in report


def _state(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(path)["model"]


@pytest.mark.parametrize("name", ["albef/tiny", "vlmo/tiny"])
def test_resume_continues_bit_for_bit(tmp_path, name, small_recipe):
    """2·N steps in one go == N steps, a fresh process state, resume, N more steps.

    One intra-op thread: with several, some CPU kernels reduce in a thread-dependent order, so even two
    identical uninterrupted runs differ at the 1e-8 level (measured on torch 2.15 CPU).
    """
    straight, split = tmp_path / "straight", tmp_path / "split"
    recipe = small_recipe(tmp_path, name, "train.steps=6", "train.cpu_threads=1")
    run_pretraining(recipe, straight, progress=False)
    half = small_recipe(tmp_path, name, "train.steps=6", "train.cpu_threads=1")
    first = Pretraining(half, split)
    first_trainer = first.trainer(progress=False)
    first_trainer.cfg = small_recipe(tmp_path, name, "train.steps=3", "train.cpu_threads=1").train  # stop early
    first_trainer.fit()
    torch.manual_seed(12345)  # the resumed process starts from unrelated RNG state
    run_pretraining(recipe, split, resume=True, progress=False)
    a = _state(ckpt.latest_checkpoint(straight / "checkpoints"))
    b = _state(ckpt.latest_checkpoint(split / "checkpoints"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, small_recipe):
    run = Pretraining(small_recipe(tmp_path, "albef/tiny", "train.steps=6", "train.ckpt_every=2",
                                   "train.log_every=1"), tmp_path / "run")
    itm = run.model.objectives["itm"]
    original = itm.forward
    calls = {"n": 0}

    def poisoned(step):
        out = original(step)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(itm, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match="Last finite checkpoint: .*step_00000002.pt"):
        run.trainer(progress=False).fit()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path, small_data):
    """A real process killed with SIGTERM mid-run saves, exits 143, and `--resume` completes the run."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "vlkit", "train", "albef/tiny", *small_data,
            f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=400", "train.log_every=1",
            "eval.k_test=4", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait until training is under way
        lines.append(line)
        if "step 3/400" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=240)
    log = "".join(lines) + rest
    assert proc.returncode == 143, log
    assert "checkpoint written to" in log and "--resume" in log
    saved = ckpt.list_checkpoints(out / "checkpoints")
    assert saved and 3 <= saved[-1][0] < 400
    # stop 2 steps later (max_steps: the schedule still spans train.steps, so the resumed recipe is the run's)
    resume = [*args[:-3], "train.max_steps=" + str(saved[-1][0] + 2), "--out", str(out), "--no-progress", "--resume"]
    done = subprocess.run(resume, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == saved[-1][0] + 2


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_00000002.pt").write_bytes(b"x")
    from vlkit.cli import main

    assert main(["train", "albef/tiny", "--out", str(out)]) == 2


def test_checkpoints_load_with_weights_only_and_reject_foreign_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not a vlkit training checkpoint"):
        ckpt.load(path)
