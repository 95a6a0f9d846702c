"""Ctrl-C and SIGTERM, in real processes: in-process training hands the interrupt to its caller (a
:class:`KeyboardInterrupt`, so a test session stops), loader workers do not break the checkpoint, and an
interrupted ``vlkit ablate`` ends like ``vlkit train`` and continues when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL = ["data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8",
         "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5",
         "train.batch_size=8", "train.log_every=1", "train.cpu_threads=1", "eval.batch_size=8", "eval.k_test=4"]

TRAINING = """
import os, signal, sys
from pathlib import Path
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining

def interrupted_training(root, out, how):
    '''albef/tiny for 200 steps, interrupted while it reads its 4th batch: `group` sends SIGINT to the whole
    process group (a terminal's Ctrl-C: the loader's worker processes get it too), `self` to this process.'''
    recipe = load_recipe("albef/tiny", [*{small!r}, f"data.source.root={{root}}", "train.steps=200",
                                        "data.num_workers=2"])
    trainer = Pretraining(recipe, out).trainer(progress=False)
    batches = trainer.batches

    def interrupting(start):
        loader = batches(start)  # the loader's workers start here, when the trainer asks for its batches

        def interrupted():
            for count, batch in enumerate(loader):
                if count == 3:
                    os.killpg(os.getpgrp(), signal.SIGINT) if how == "group" else os.kill(os.getpid(), signal.SIGINT)
                yield batch
        return interrupted()

    trainer.batches = interrupting
    trainer.fit()
    return trainer
"""


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``args`` in a session of its own (a signal to its process group reaches nothing else), killed
    after ``timeout`` seconds: a hang fails the test instead of stalling the suite."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{args[:3]} still running after {timeout} s (hung on the interrupt?):\n{out[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


@pytest.mark.slow
def test_ctrl_c_reaches_the_caller_of_in_process_training_as_a_keyboard_interrupt(tmp_path):
    """The library call: Ctrl-C to the whole process group (loader workers included) finishes the step,
    writes a checkpoint and raises Interrupted, a KeyboardInterrupt, promptly; the workers' copy of the
    signal does not break the next batch."""
    script = tmp_path / "train.py"
    script.write_text(TRAINING.format(small=SMALL) + textwrap.dedent(f"""
        from vlkit.train.trainer import Interrupted
        try:
            interrupted_training({str(tmp_path / 'data')!r}, {str(tmp_path / 'run')!r}, "group")
        except KeyboardInterrupt as err:
            print("caught", type(err).__name__, isinstance(err, Interrupted), err.signum, Path(err.path).name)
            sys.exit(0)
        print("training was not interrupted")
        sys.exit(1)
    """))
    start = time.monotonic()
    done = run([sys.executable, str(script)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert f"caught Interrupted True {int(signal.SIGINT)} step_00000004.pt" in done.stdout, done.stdout[-4000:]
    assert (tmp_path / "run" / "checkpoints" / "step_00000004.pt").is_file()
    assert "Traceback" not in done.stdout and "exited unexpectedly" not in done.stdout
    assert done.stdout.count("received SIGINT") == 1  # the training process's; the workers ignore theirs
    assert time.monotonic() - start < 240


@pytest.mark.slow
def test_ctrl_c_during_in_process_training_stops_the_test_session(tmp_path):
    """pytest stops the whole session on a KeyboardInterrupt: a test that trains in-process and gets
    Ctrl-C ends the run (exit 2, "! ...Interrupted: interrupted by SIGINT ..."), and the tests after it do not
    run. (When the
    trainer raised a RuntimeError, that test failed and the session went on.)"""
    marker = tmp_path / "second_test_ran"
    tests = tmp_path / "session" / "test_interrupted_session.py"
    tests.parent.mkdir()
    tests.write_text(TRAINING.format(small=SMALL) + textwrap.dedent(f"""
        def test_a_training():
            interrupted_training({str(tmp_path / 'data')!r}, {str(tmp_path / 'run')!r}, "self")

        def test_b_after():
            Path({str(marker)!r}).write_text("ran")
    """))
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tests.parent)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-4000:]
    assert "Interrupted: interrupted by SIGINT; checkpoint written to" in done.stdout, done.stdout[-4000:]
    assert not marker.exists()
    assert (tmp_path / "run" / "checkpoints" / "step_00000004.pt").is_file()


@pytest.mark.slow
def test_an_interrupted_ablation_exits_143_and_the_same_command_continues(tmp_path):
    """SIGTERM while the grid's first run trains: that run writes a checkpoint, the command ends in one
    line and exit 143 (as `vlkit train`); running the same command again resumes that run and trains the
    next one."""
    overrides = "\n".join(f"  - {o}" for o in [*SMALL, f"data.source.root={tmp_path / 'data'}", "train.steps=40"])
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"description: interrupted grid\nbase: dual/tiny\noverrides:\n{overrides}\n"
                    "metrics: [r_mean]\nseeds: [0]\nvariants:\n  first: {}\n"
                    "  second: {objectives.itc.label_smoothing: 0.0}\n")
    out = tmp_path / "ablation"
    command = [sys.executable, "-m", "vlkit", "ablate", str(grid), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the first run trains
        seen.append(line)
        if "step 3/40" in line:
            break
    proc.send_signal(signal.SIGTERM)
    try:
        rest, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("vlkit ablate did not stop after SIGTERM")
    log = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGTERM, log[-4000:]
    assert "Traceback" not in log and "interrupted by SIGTERM; checkpoint written to" in log, log[-4000:]
    first = out / "runs" / "first" / "seed0"
    assert not (first / "metrics.json").exists() and list((first / "checkpoints").glob("step_*.pt"))

    again = run(command, cwd=ROOT)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"{first}: resuming" in again.stdout, again.stdout[-4000:]
    for variant in ("first", "second"):
        assert json.loads((out / "runs" / variant / "seed0" / "metrics.json").read_text())["steps"] == 40
