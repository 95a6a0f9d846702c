"""No lost or clobbered runs: a run holds its folder; a finished run or evaluation is replaced only when
asked; a resumed run is the same run (its recipe on disk is what ran); crashed writes leave nothing
behind; result files get the run's file mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlkit.recipe import load_recipe
from vlkit.train import run_folder
from vlkit.train.pretrain import run_pretraining
from vlkit.train.run_checks import ResumeMismatch
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent


def small(root: Path, *extra: str):
    return load_recipe("albef/tiny", ["data.source.train_images=48", "data.source.val_images=6",
                                      "data.source.test_images=8", f"data.source.root={root}", "train.batch_size=8",
                                      "train.warmup_steps=1", "train.cpu_threads=1", "train.log_every=1",
                                      "eval.batch_size=8", "eval.k_test=4", "eval.swap_probe=false", *extra])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("folder-data")


def test_a_second_process_on_a_held_folder_fails_at_once_naming_the_holder(data_root: Path, tmp_path: Path) -> None:
    """Observation 8: two `vlkit train` into one --out both "succeeded"; the first run's checkpoints were replaced."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vlkit.train.run_folder import locked\n"
         f"with locked({str(out)!r}, 'vlkit train'):\n    print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(run_folder.RunFolderBusy, match=rf"{out} is in use by pid {holder.pid} on "):
            run_pretraining(small(data_root, "train.steps=1"), out, progress=False)
        assert time.monotonic() - started < 30  # at once: no data prepared, no model built
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    def lock_again() -> None:
        with run_folder.locked(out, "test again"):
            pass

    # released when the holder died; a second lock, even from the same process, is refused
    with run_folder.locked(out, "test"), pytest.raises(run_folder.RunFolderBusy, match=f"pid {os.getpid()}"):
        lock_again()


@pytest.mark.slow
def test_finished_runs_are_replaced_only_when_asked_and_resume_keeps_the_recipe(data_root: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_pretraining(small(data_root, "train.steps=4", "train.max_steps=2"), out, progress=False)
    first = ckpt.list_checkpoints(out / "checkpoints")
    assert [s for s, _ in first] == [2]
    with pytest.raises(run_folder.RunFolderTaken, match=r"already holds a run \(metrics.json, model.safetensors, "
                                                        r"recipe.yaml.*checkpoints/.*--resume.*--overwrite"):
        run_pretraining(small(data_root, "train.steps=4", "train.max_steps=2"), out, progress=False)
    assert ckpt.list_checkpoints(out / "checkpoints") == first

    # observation 3: a changed schedule on resume kept the old one and rewrote recipe.yaml to the new value
    with pytest.raises(ResumeMismatch, match=r"train.lr: 0.001 → 0.002.*recipe.yaml"):
        run_pretraining(small(data_root, "train.steps=4", "train.lr=2e-3"), out, resume=True, progress=False)
    with pytest.raises(ResumeMismatch, match=r"train.steps: 4 → 8"):
        run_pretraining(small(data_root, "train.steps=8"), out, resume=True, progress=False)
    assert load_recipe(out / "recipe.yaml").train.lr == 1e-3  # the recipe on disk is what ran
    # keys that cannot change the numbers may change; recipe.yaml then records them
    run_pretraining(small(data_root, "train.steps=4", "train.log_every=3", "eval.k_test=2"), out, resume=True,
                    progress=False)
    resumed = load_recipe(out / "recipe.yaml")
    assert resumed.train.log_every == 3 and resumed.eval.k_test == 2 and resumed.train.max_steps is None
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert ckpt.stored_recipe(ckpt.latest_checkpoint(out / "checkpoints")) == resumed.to_yaml()

    # --overwrite replaces the run: the old checkpoints go with it
    run_pretraining(small(data_root, "train.steps=1"), out, overwrite=True, progress=False)
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [1]
    assert load_recipe(out / "recipe.yaml").train.steps == 1


def test_eval_refuses_to_replace_a_runs_metrics_and_recipe_unless_asked(data_root: Path, tmp_path: Path) -> None:
    from vlkit.eval.checkpoint_eval import run_evaluation

    out = tmp_path / "run"
    run_pretraining(small(data_root, "train.steps=1"), out, progress=False)
    trained = (out / "metrics.json").read_text(), (out / "recipe.yaml").read_text()
    with pytest.raises(run_folder.RunFolderTaken, match=r"already holds metrics.json and recipe.yaml \(a training "
                                                        r"run's\); pass --overwrite"):
        run_evaluation(small(data_root, "eval.k_test=0"), out, out)
    assert ((out / "metrics.json").read_text(), (out / "recipe.yaml").read_text()) == trained
    run_evaluation(small(data_root, "eval.k_test=0"), out, tmp_path / "ev")
    with pytest.raises(run_folder.RunFolderTaken, match="an earlier evaluation's"):
        run_evaluation(small(data_root, "eval.k_test=0"), out, tmp_path / "ev")
    metrics = run_evaluation(small(data_root, "eval.k_test=0"), out, tmp_path / "ev", overwrite=True)
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert written["r_mean"] == metrics["r_mean"] and written["provenance"]["checkpoint"]["path"].endswith(".pt")
    assert written["provenance"]["eval_data"]["counts"]["n_images"] == 8


def test_orphaned_temporary_files_are_removed_on_the_next_start(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    orphans = [out / "checkpoints" / ".step_00000004.pt.4242-0a1b2c3d.tmp", out / ".model.safetensors.4242-9f.tmp",
               out / ".metrics.json.4242-00.tmp"]
    for path in orphans:
        path.write_bytes(b"half a file")
    keep = out / "checkpoints" / "notes.txt"
    keep.write_text("mine")
    with run_folder.locked(out, "test"):
        run_folder.claim_for_training(out, resume=False, overwrite=False)
    assert not any(p.exists() for p in orphans) and keep.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_and_weights_get_the_runs_file_mode(tmp_path: Path, umask: int) -> None:
    """They were created 0600 by tempfile.mkstemp (and safetensors), unlike every other file of the run."""
    previous = os.umask(umask)
    try:
        ckpt.save_atomic({"model": {"w": torch.ones(2)}, "step": 1}, tmp_path / "checkpoints" / "step_00000001.pt")
        release.save_weights(tmp_path / "model.safetensors", {"w": torch.ones(2)}, recipe_yaml="", step=1, samples=1)
        ckpt.write_text_atomic(tmp_path / "metrics.json", "{}\n")
        (tmp_path / "other.txt").write_text("x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (tmp_path / "other.txt").stat().st_mode & 0o777 == expected
    for path in (tmp_path / "checkpoints" / "step_00000001.pt", tmp_path / "model.safetensors",
                 tmp_path / "metrics.json"):
        assert path.stat().st_mode & 0o777 == expected, path
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []
