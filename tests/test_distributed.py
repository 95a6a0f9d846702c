"""Training on several processes, on the CPU: 2 gloo processes spawned per test, each bounded in time.

What the maths says must hold across world sizes, checked against one process over the concatenated
batch: cross-rank contrastive gradients, the gathered queue, global hard negatives (draws and
gradients), whole training runs, and resuming at another world size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vlkit.weights import checkpoints as ckpt

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
TIMEOUT_S = 240  # per launch; a hung collective fails the test instead of CI
pytestmark = pytest.mark.slow  # every test spawns processes (4-60 s each on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, out: Path, args: dict[str, Any] | None = None, *, world: int = 2) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world`` processes (torchrun's environment); every rank's result."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(out), json.dumps(args or {})],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{scenario} on {world} processes did not finish in {TIMEOUT_S} s")
    failed = [f"--- rank {rank} (exit {proc.returncode}):\n{log[-3000:]}"
              for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)) if proc.returncode != 0]
    assert not failed, f"{scenario} on {world} processes failed:\n" + "\n".join(failed)
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(world)]


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """``‖got − want‖ / ‖want‖`` over all gradients together (same names required)."""
    assert sorted(got) == sorted(want)
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want]).norm()
    return float(diff / torch.cat([w.flatten() for w in want.values()]).norm())


# --------------------------------------------------------------------------- collectives
def test_gathers_handle_ragged_batches_and_send_gradients_home(tmp_path):
    ranks = launch("collectives", tmp_path / "c")
    everything = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=torch.float64)[:, None].repeat(1, 3)
    for r, rank in enumerate(ranks):
        assert rank["sizes"] == [2, 3] and rank["offset"] == [0, 2][r]
        assert torch.equal(rank["no_grad"], everything) and torch.equal(rank["with_grad"], everything)
        # d/dx of Σ_ranks Σ_j (j + 1)·gathered_j: each of this rank's rows gets (its global row + 1) from both ranks
        first = [0, 2][r]
        want = 2 * (torch.arange(first, first + r + 2, dtype=torch.float64)[:, None] + 1).repeat(1, 3)
        assert torch.equal(rank["grad"], want)
        assert torch.equal(rank["keep_local_grad"], torch.ones(r + 2, 3, dtype=torch.float64))  # local rows only
        assert rank["padded"].tolist() == [[1, 1, 1, -1]] * 2 + [[2, 2, 2, 2]] * 3


# --------------------------------------------------------------------------- contrastive
@pytest.mark.parametrize("teacher", [False, True], ids=["in_batch", "queue_and_distill"])
def test_itc_gather_with_grad_gives_the_single_process_gradients(tmp_path, teacher):
    args = {"gather": "with_grad", "teacher": teacher}
    ranks = launch("itc", tmp_path / "two", args)
    (single,) = launch("itc", tmp_path / "one", args, world=1)
    # each rank's loss is the mean over its rows; their mean is the global loss
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, single["loss"], rtol=1e-5, atol=1e-6)
    for rank in ranks:  # DDP averaged the gradients: every rank holds the global batch's
        assert relative_error(rank["grads"], single["grads"]) <= 1e-5
    if teacher:  # the queue received both ranks' teacher features, in the global batch's order
        for rank in ranks:
            for key, value in single["queue"].items():
                torch.testing.assert_close(rank["queue"][key], value, rtol=1e-5, atol=1e-6)


def test_itc_without_grad_is_vlmo_global_loss_with_gradients_divided_by_world_size(tmp_path):
    ranks = launch("itc", tmp_path / "two", {"gather": "without_grad", "idx_targets": False})
    (single,) = launch("itc", tmp_path / "one", {"gather": "without_grad", "idx_targets": False}, world=1)
    for rank in ranks:  # every rank computes the whole global loss
        torch.testing.assert_close(rank["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        # a rank's features reach the loss only through its own slots: after DDP's averaging the
        # encoder's gradients are half the global loss's; the temperature, used whole on every rank, keeps its own
        scaled = {k: v if k.endswith("temp.value") else 2 * v for k, v in rank["grads"].items()}
        assert relative_error(scaled, single["grads"]) <= 1e-5


def test_itc_local_negatives_differ_from_the_global_batch(tmp_path):
    """``gather: none`` (ALBEF's in-batch negatives) is not the global loss: the comparison can fail."""
    ranks = launch("itc", tmp_path / "two", {"gather": "none"})
    (single,) = launch("itc", tmp_path / "one", {"gather": "none"}, world=1)
    assert relative_error(ranks[0]["grads"], single["grads"]) > 1e-2


# --------------------------------------------------------------------------- global hard negatives
@pytest.mark.parametrize(("gather", "exclude"), [("inputs", "same_image"), ("encodings", "same_image"),
                                                 ("inputs", "diagonal")])
def test_global_hard_negatives_come_from_every_rank_and_match_one_process(tmp_path, gather, exclude):
    """``exclude: same_image`` never draws a caption of the sample's image; ``diagonal`` (VLMo's
    ``fill_diagonal_(0)``) never draws the sample's own column of the global batch."""
    from tests.dist_worker import GLOBAL_BATCH, GLOBAL_IDX

    ranks = launch("global_hard", tmp_path / "two", {"gather": gather, "exclude": exclude})
    (reference,) = launch("global_hard_reference", tmp_path / "ref", {"world": 2, "exclude": exclude}, world=1)
    per_rank = GLOBAL_BATCH // 2
    idx = torch.tensor(GLOBAL_IDX)
    from_other_rank = 0
    for r, rank in enumerate(ranks):
        own = idx[r * per_rank:(r + 1) * per_rank]
        own_columns = torch.arange(r * per_rank, (r + 1) * per_rank)
        for drawn in (rank["text_draw"], rank["image_draw"]):
            if exclude == "same_image":
                assert (idx[drawn] != own).all()  # never the positive nor a caption of the same image
            else:
                assert (drawn != own_columns).all()  # never the positive
            from_other_rank += int(((drawn // per_rank) != r).sum())
        assert torch.equal(rank["text_draw"], reference["text_draws"][r])
        assert torch.equal(rank["image_draw"], reference["image_draws"][r])
        torch.testing.assert_close(rank["loss"], reference["losses"][r], rtol=1e-5, atol=1e-6)
        assert relative_error(rank["grads"], reference["grads"]) <= 1e-5
    assert from_other_rank > 0


# --------------------------------------------------------------------------- evaluation
def test_retrieval_split_over_ranks_gives_the_single_process_metrics(tmp_path):
    ranks = launch("retrieval", tmp_path / "two")
    (single,) = launch("retrieval", tmp_path / "one", world=1)
    assert 0 < single["metrics"]["r_mean"] < 100 and single["metrics"]["n_texts"] == 20
    for rank in ranks:  # every rank returns the metrics of the whole gallery
        assert rank["metrics"] == pytest.approx(single["metrics"], abs=1e-9)


# --------------------------------------------------------------------------- whole runs
SMALL = ["data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8",
         "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5"]
# AdamW's eps raised from 1e-8 to 1e-3: with the default, an element whose exact gradient is zero or tiny
# (attention key biases: softmax ignores them) moves by ±lr on the sign of its rounding noise, which
# differs between any two summation orders (an all-reduce, another micro-batch split); the comparison
# would then only hold up to the learning rate. With eps 1e-3 such elements move by g / eps · lr.
EXACT = ["objectives.itm=null", "objectives.mlm=null", "objectives.itc.gather=with_grad",
         "objectives.itc.queue_size=12", "objectives.itc.distill.ramp_steps=2", "momentum.warmup_steps=2",
         "train.batch_size=8", "train.steps=6", "train.warmup_steps=2", "train.log_every=2", "train.cpu_threads=1",
         "train.eps=1.0e-3",
         "eval.batch_size=8", "eval.k_test=4"]


def train(tmp_path: Path, name: str, world: int, *extra: str, resume: bool = False) -> Path:
    out = tmp_path / name
    overrides = [*SMALL, f"data.source.root={tmp_path / 'data'}", *EXACT, *extra]
    launch("train", tmp_path / f"{name}-result", {"recipe": "albef/tiny", "overrides": overrides, "out": str(out),
                                                  "resume": resume}, world=world)
    return out


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return ckpt.load(ckpt.checkpoint_path(run / "checkpoints", step))["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Every weight, buffer and queue within 1e-5 (measured: ≤ 3e-7 without and 2.2e-6 with gradient
    accumulation, torch 2.15 CPU)."""
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=1e-5, msg=key)


def test_two_processes_train_the_one_process_model_and_resume_at_another_world_size(tmp_path):
    """ITC over the global batch with gather-with-grad, queue, distillation and the EMA teacher:
    2 ranks × 4 samples and 1 rank × 8 samples take the same steps; a run checkpointed on 2 ranks
    resumes on 1 and the reverse, and all end where the uninterrupted run ends; so does FSDP, and
    so do 2 ranks against 1 with gradient accumulation.
    (MLM and ITM are left out: their per-rank means and random negatives differ from one process's
    by design, as in ALBEF and VLMo.)"""
    one = train(tmp_path, "one", 1)
    two = train(tmp_path, "two", 2)
    assert_same_weights(weights(two, 6), weights(one, 6))
    assert json.loads((two / "metrics.json").read_text())["samples"] == 48

    train(tmp_path, "two_then_one", 2, "train.max_steps=3")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "two_then_one" / "checkpoints")] == [3]
    train(tmp_path, "two_then_one", 1, resume=True)
    assert_same_weights(weights(tmp_path / "two_then_one", 6), weights(one, 6))

    train(tmp_path, "one_then_two", 1, "train.max_steps=3")
    train(tmp_path, "one_then_two", 2, resume=True)
    assert_same_weights(weights(tmp_path / "one_then_two", 6), weights(one, 6))

    # FSDP2 (parameters sharded per transformer block, the teacher's alongside) takes the same steps
    fsdp = train(tmp_path, "fsdp", 2, "train.strategy=fsdp", "train.eval_every=3")  # and trains on after an eval
    assert_same_weights(weights(fsdp, 6), weights(one, 6))

    # gradient accumulation: DDP reduces once per step (no_sync on the first micro-batch)
    one_accum = train(tmp_path, "one_accum", 1, "train.grad_accum=2")
    two_accum = train(tmp_path, "two_accum", 2, "train.grad_accum=2")
    assert_same_weights(weights(two_accum, 6), weights(one_accum, 6))


def test_fsdp_bf16_mome_with_global_hard_negatives_evaluates_mid_run(tmp_path):
    """VLMo under FSDP2 in bf16: every MoME block is its own unit; re-ranking during the evaluation runs
    a different number of block forwards on each rank (the queries are split), which must not gather,
    and the gathered weights are bf16 (the evaluation runs under autocast)."""
    out = tmp_path / "vlmo"
    overrides = [*SMALL, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=4",
                 "train.eval_every=2", "train.strategy=fsdp", "train.precision=bf16", "train.cpu_threads=1",
                 "eval.batch_size=8", "eval.k_test=4"]
    (result, _) = launch("train", tmp_path / "result", {"recipe": "vlmo/tiny", "overrides": overrides, "out": str(out)})
    assert result["metrics"]["steps"] == 4 and 0 <= result["metrics"]["r_mean"] <= 100


def test_torchrun_command_trains_and_writes_metrics_once(tmp_path):
    """The README's command, through torchrun and the CLI (small data, 3 steps)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "vlkit", "train", "recipes/albef/tiny.yaml", "train.max_steps=3",
               *SMALL, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "eval.batch_size=8",
               "eval.k_test=4", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("finished:") == 1  # rank 0 reports; rank 1 stays quiet
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["samples"] == 24
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [3]


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    """SLURM and torchrun deliver SIGTERM to each process at slightly different times; here only rank 1
    gets it. Both ranks must agree to stop after the same step, write one checkpoint and exit 143."""
    import signal
    import time

    out, port = tmp_path / "run", free_port()
    overrides = [*SMALL, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=100000",
                 "train.log_every=1"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "vlkit", "train", "recipes/albef/tiny.yaml", *overrides,
                                       "--out", str(out), "--no-progress"], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list((out / "tb").glob("events*")):  # rank 0 logged its first step
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the run did not start"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], logs[0][1][-2000:] + logs[1][1][-2000:]
    assert "interrupted by SIGTERM" in logs[0][1] and "--resume" in logs[0][1]
    (step, path), = ckpt.list_checkpoints(out / "checkpoints")
    assert step >= 1 and ckpt.load(path)["world_size"] == 2


def test_fsdp_weights_file_stores_tied_weights_once_like_one_process(tmp_path):
    """BERT's MLM decoder is the word-embedding matrix: FSDP2 gathers each name separately, and the
    weights file must still hold it once (the same tensors and aliases as a one-process run)."""
    from safetensors import safe_open

    def stored(run: Path) -> tuple[set[str], dict[str, str]]:
        with safe_open(str(run / "model.safetensors"), framework="pt") as handle:
            return set(handle.keys()), json.loads((handle.metadata() or {})["aliases"])

    few = [*SMALL, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=1",
           "train.cpu_threads=1", "eval.batch_size=8", "eval.k_test=0", "eval.swap_probe=false"]
    runs = {}
    for name, world, extra in (("one", 1, []), ("fsdp", 2, ["train.strategy=fsdp"])):
        runs[name] = tmp_path / name
        launch("train", tmp_path / f"{name}-result", {"recipe": "albef/tiny", "overrides": [*few, *extra],
                                                      "out": str(runs[name])}, world=world)
    one_keys, one_aliases = stored(runs["one"])
    fsdp_keys, fsdp_aliases = stored(runs["fsdp"])
    assert any(k.endswith("predictions.decoder.weight") for k in one_aliases)  # the tie this test is about
    assert fsdp_aliases == one_aliases and fsdp_keys == one_keys
    # the checkpoint too holds the tied tensor once (one storage under both names)
    state = ckpt.load(ckpt.latest_checkpoint(runs["fsdp"] / "checkpoints"))["model"]
    for alias, owner in fsdp_aliases.items():
        assert state[alias].untyped_storage().data_ptr() == state[owner].untyped_storage().data_ptr(), alias
