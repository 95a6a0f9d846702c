"""The training loop: a thin driver over a model whose ``forward(batch, step)`` returns a
:class:`~vlkit.models.model.StepResult` and whose ``after_step`` applies side effects.

It owns the optimizer, the schedule, gradient accumulation and clipping, autocast, checkpoints
(atomic, last ``k`` kept, exact resume), logging (progress bar, TensorBoard), a non-finite guard and
graceful SIGTERM / Ctrl-C handling (a checkpoint is written before exiting).

Progress: one bar for the steps (:mod:`vlkit.core.progress`; log records are written above it, never
across it) and, inside it, the evaluation's own bars. ``progress=False`` turns off every bar of the run,
the evaluation's included, and logs a line every ``train.log_every`` steps instead.

Stop signals: while :meth:`Trainer.fit` trains, SIGTERM and SIGINT (Ctrl-C) do not stop the process at
once; the step under way finishes, a checkpoint is written, and :class:`Interrupted` is raised. It is a
:class:`KeyboardInterrupt` (not an ``Exception``), so it passes every ``except Exception`` on its way up
and whoever called ``fit`` in-process stops as on any Ctrl-C: a pytest session ends, a notebook cell is
interrupted. ``vlkit train`` catches it, prints how to ``--resume`` and exits ``128 + signal`` (130 for
Ctrl-C, 143 for SIGTERM). A second Ctrl-C raises :class:`KeyboardInterrupt` at once, without a
checkpoint. The handlers are installed before the data loader starts its worker processes, which
inherit them and ignore the signals (a terminal's Ctrl-C reaches every process of the group: the
workers used to exit on it, and the next batch failed with a traceback instead of a checkpoint); they
are restored when ``fit`` returns or raises.

The non-finite guard watches the loss, the gradient norm and the weights after every optimizer step,
on the device (a flag per quantity holding the first step it went NaN or infinite; no host sync in the
step). The flags are read on the logging cadence, before every checkpoint and before every evaluation:
a run whose numbers diverged stops with :class:`NonFiniteLoss` (a
:class:`~vlkit.core.errors.NonFiniteError`, exit 3) naming what diverged, when, and the last
checkpoint known finite; no checkpoint or weights file is ever written from a non-finite state.

On several processes (``torchrun``) every rank runs this loop on its share of the global batch; the
model is wrapped for DDP or sharded with FSDP2 (:mod:`vlkit.train.distributed`). Rank 0 alone shows
the progress bar, writes TensorBoard scalars (averaged over ranks) and checkpoints (full tensors, so
they load at any world size). Stop signals, the bad-sample count and the non-finite guard are agreed
on by all ranks, so they stop at the same step.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from vlkit import dist
from vlkit import progress as progress_bars
from vlkit.core.batch import Batch
from vlkit.core.errors import NonFiniteError
from vlkit.models.model import PretrainModel
from vlkit.train.config import TrainConfig
from vlkit.train.distributed import (
    average_gradients,
    freeze_unused_parameters,
    full_state,
    load_full_state,
    set_gradient_sync,
    unsharded,
    wrap_model,
)
from vlkit.train.optim import build_optimizer
from vlkit.train.rng import cpu_rng, restore_rng, rng_state
from vlkit.train.schedule import build_scheduler
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release

log = logging.getLogger("vlkit.train")


class NonFiniteLoss(NonFiniteError):
    """The loss, the gradient norm or the weights became NaN or infinite; the run stopped without writing
    a checkpoint or weights file of that state. ``last_finite`` is the newest checkpoint known finite."""

    def __init__(self, message: str, last_finite: Path | None = None) -> None:
        self.last_finite = last_finite
        super().__init__(message)


GUARDED = ("loss", "gradient norm", "weights")
"""What the non-finite guard watches, in the order of its device flags."""
NEVER = 2**62
"""Flag value: not (yet) non-finite."""


@dataclass
class _Finite:
    """The newest checkpoint this run wrote or resumed from, with what was checked about it."""

    path: Path
    step: int
    largest: float | None
    """The largest |weight| (rank 0; None on other ranks)."""
    how: str


class Interrupted(KeyboardInterrupt):
    """SIGTERM / SIGINT arrived during training; a checkpoint was written. ``signum`` is the signal,
    ``path`` the checkpoint. A :class:`KeyboardInterrupt`, so that in-process callers (a test session,
    a notebook) stop as on any Ctrl-C; ``vlkit train`` exits ``128 + signum`` (see the module docstring)."""

    def __init__(self, signum: int, path: Path) -> None:
        self.signum = signum
        self.path = path
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint written to {path}")


class TooManyBadSamples(RuntimeError):
    """More unreadable samples than ``data.max_bad_fraction`` allows; a checkpoint was written."""

    def __init__(self, skipped: int, samples: int, limit: float, path: Path) -> None:
        self.path = path
        super().__init__(f"{skipped} of {samples} samples so far could not be read (limit data.max_bad_fraction="
                         f"{limit:g}); every one is named with its reason in the run's bad_samples.jsonl. Checkpoint "
                         f"written to {path}; fix the data or "
                         "raise the limit, then resume")


MIN_BAD_SAMPLES = 16  # the bad-sample limit applies once at least this many samples were skipped


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RunPaths:
    """Where a run writes: ``recipe.yaml``, ``checkpoints/``, ``model.safetensors``, ``tb/``, ``metrics.json``."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def weights(self) -> Path:
        return self.out / release.FILE_NAME

    @property
    def tensorboard(self) -> Path:
        return self.out / "tb"

    @property
    def recipe(self) -> Path:
        return self.out / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.json"


class _StopSignals:
    """Turns SIGTERM / SIGINT into a flag checked between steps (main thread only; the previous handlers
    are restored on exit). Forked data-loader workers inherit the handler and ignore the signals: the
    process that installed it decides when to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked loader worker: the training process stops it
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        log.warning("received %s: finishing this step, then writing a checkpoint", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class _Window:
    """Accumulates scalars between two log steps (device tensors, synced only when logged)."""

    start: float = field(default_factory=time.perf_counter)
    data_seconds: float = 0.0
    samples: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    latest: dict[str, Tensor] = field(default_factory=dict)
    """Values logged as they are at the window's last step (e.g. the largest |weight|)."""
    count: int = 0
    schedule: dict[str, float] = field(default_factory=dict)
    """The objectives' schedule values at the window's last step (e.g. ``alpha/itc``)."""

    def add(self, values: dict[str, Tensor]) -> None:
        self.count += 1
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = value if key not in self.sums else self.sums[key] + value


def _largest(tensors: list[Tensor]) -> Tensor | None:
    """The largest ``|value|`` over ``tensors`` (this rank's shards of DTensors), NaN when any value is NaN;
    one fused reduction on the device, no host sync. None when there are no tensors."""
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    local = [t for t in local if t.numel()]
    if not local:
        return None
    return torch.nn.utils.get_total_norm(local, norm_type=float("inf"))


class Trainer:
    """Optimizes ``model`` for ``cfg.steps`` steps.

    Args:
        model: the model (already on ``device``).
        cfg: the recipe's ``train`` section.
        batches: ``start_sample → iterator of micro-batches`` beginning at that sample (for resume).
        device: the training device.
        paths: the run folder.
        recipe_yaml: the resolved recipe, stored in every checkpoint.
        evaluate: called at ``eval_every`` and at the end; returns metrics.
        progress: show progress bars (training and the evaluation's); off: a log line every
            ``log_every`` steps instead.
        max_bad_fraction: stop (after a checkpoint) once more than this fraction of the samples read
            so far could not be loaded, and at least :data:`MIN_BAD_SAMPLES` of them.
        on_device: applied to each micro-batch once it is on ``device`` (e.g. uint8 → normalized images).
    """

    def __init__(self, model: PretrainModel, cfg: TrainConfig, batches: Callable[[int], Iterator[Batch]],
                 device: torch.device, paths: RunPaths, recipe_yaml: str,
                 evaluate: Callable[[], dict[str, float]] | None = None, progress: bool = True,
                 max_bad_fraction: float = 1.0, on_device: Callable[[Batch], Batch] | None = None) -> None:
        self.model = model
        self.on_device = on_device
        self.max_bad_fraction = max_bad_fraction
        self.cfg = cfg
        self.batches = batches
        self.device = device
        self.paths = paths
        self.recipe_yaml = recipe_yaml
        self.evaluate = evaluate
        self.progress = progress and dist.is_main()
        self.world = dist.world_size()
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.micro_batch = cfg.micro_batch(self.world)
        self.forward_model: torch.nn.Module = model  # DDP wraps it in fit(), after the unused-parameter probe
        self._replicated: list[torch.nn.Parameter] = []
        self._fsdp = cfg.strategy == "fsdp" and self.world > 1
        if self._fsdp:  # shards the parameters in place, before the optimizer sees them
            self.forward_model, self._replicated = wrap_model(model, cfg.strategy, device, bf16=use_bf16)
        self.optimizer = build_optimizer(model, cfg, device)  # after FSDP replaced the parameters
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.step = 0
        self.samples = 0  # keys of the global stream consumed by all ranks (the resume position)
        self.skipped = 0  # unreadable samples, all ranks
        # per GUARDED quantity: the first 0-based step it went NaN / infinite (NEVER: not yet); on the device
        self._first_bad = torch.full((len(GUARDED),), NEVER, dtype=torch.long, device=device)
        self._last_finite: _Finite | None = None
        self._writer: Any = None
        self._bar_shown = False  # fit() shows a bar; without one, _log logs a line

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write a checkpoint of the current state (refusing a non-finite one), the weights file beside
        it (``train.save_weights``), and prune old checkpoints. Every rank calls it (FSDP gathers
        shards); rank 0 writes (and checks every tensor it writes finite once more)."""
        self._check_finite()
        path = ckpt.checkpoint_path(self.paths.checkpoints, self.step)
        model_state, optimizer_state = full_state(self.model, self.optimizer)
        rng_ranks = dist.all_gather_object(rng_state())
        largest = None
        if dist.is_main():
            largest = ckpt.largest_magnitude(model_state)
            ckpt.save_atomic({
                "step": self.step, "samples": self.samples, "skipped": self.skipped,
                "model": model_state, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "rng": rng_ranks[0], "rng_ranks": rng_ranks, "world_size": self.world, "recipe": self.recipe_yaml,
            }, path)
            if self.cfg.save_weights:
                release.save_weights(self.paths.weights, model_state, recipe_yaml=self.recipe_yaml,
                                          step=self.step, samples=self.samples)
            ckpt.prune(self.paths.checkpoints, self.cfg.keep_last)
        dist.barrier()
        self._last_finite = _Finite(path, self.step, largest, "its model weights, buffers and optimizer state were "
                                    "checked finite when it was written")
        return path

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint where it was written, at this run's world size (which may differ:
        the data continue from the same global position; with another world size each rank's RNG
        stream is derived from rank 0's)."""
        state = ckpt.load(path, map_location="cpu")
        try:
            ckpt.require_finite({"model": state["model"], "optimizer": state["optimizer"]}, f"resume from {path}")
        except NonFiniteError as err:
            raise NonFiniteLoss(f"{err}. It was written by a vlkit without the non-finite guard; resume from an "
                                "earlier checkpoint (--resume CKPT) or start again with a lower train.lr") from None
        if state["version"] == 1:  # optimizer state keyed by parameter position
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.samples, self.skipped = int(state["step"]), int(state["samples"]), int(state["skipped"])
        self._last_finite = _Finite(path, self.step, ckpt.largest_magnitude(state["model"]),
                                    "its model weights, buffers and optimizer state were checked finite when this "
                                    "run resumed from it")
        rng_ranks = state.get("rng_ranks") or [state["rng"]]
        me = dist.rank()
        restore_rng(cpu_rng(rng_ranks[me] if len(rng_ranks) == self.world else rng_ranks[0]))
        if len(rng_ranks) != self.world and me > 0:
            torch.manual_seed(int(torch.randint(0, 2**62, ())) + me)
        if dist.is_main():
            log.info("resumed from %s at step %d (%d samples seen; written by %d process(es), now %d)", path,
                     self.step, self.samples, int(state.get("world_size", 1)), self.world)

    def _check_finite(self) -> None:
        """Read the non-finite flags (all ranks agree); raise :class:`NonFiniteLoss` if any is set. A host
        sync: called only at log steps, before checkpoints and before evaluations."""
        first = self._first_bad.clone()
        if self.world > 1:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        steps = first.tolist()
        if min(steps) >= NEVER:
            return
        went = [f"the {what} in optimizer step {step + 1}" for what, step in zip(GUARDED, steps, strict=True)
                if step < NEVER]
        raise NonFiniteLoss(
            f"training diverged: NaN or infinite values appeared ({'; '.join(went)}; checked on the device after "
            f"every step, read at step {self.step}). No checkpoint or weights file of that state was written. "
            f"{self._last_finite_text()} Lower train.lr, enable train.clip_grad_norm, or check the data.",
            self._last_finite.path if self._last_finite is not None else None)

    def _last_finite_text(self) -> str:
        last = self._last_finite
        if last is None:
            return "Last finite checkpoint: none (this run wrote none before it diverged)."
        size = "" if last.largest is None else f"; its largest |weight| is {last.largest:.3g}"
        return (f"Last finite checkpoint: {last.path} (step {last.step}): {last.how}{size}. Finite is not the "
                "same as good: nothing checked that its weights are still useful (an oversized train.lr can "
                "leave finite but huge weights) — compare its loss curve and metrics before resuming from it.")

    def _guard(self, loss: Tensor | None, grad_norm: Tensor | None, weights: Tensor | None) -> None:
        """Record, on the device, the first step the loss, gradient norm or weights became non-finite."""
        bad = torch.stack([~torch.isfinite(t.detach().float()) if t is not None
                           else torch.zeros((), dtype=torch.bool, device=self.device)
                           for t in (loss, grad_norm, weights)])
        self._first_bad = torch.minimum(self._first_bad, torch.where(bad, self.step, NEVER))

    # ------------------------------------------------------------------ the loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _train_step(self, batches: Iterator[Batch], window: _Window) -> int:
        """One optimizer step; returns the samples this rank could not read in it."""
        self.optimizer.zero_grad(set_to_none=True)
        results = []
        skipped = 0
        for micro in range(self.cfg.grad_accum):
            waited = time.perf_counter()
            batch = next(batches)
            window.data_seconds += time.perf_counter() - waited
            self.samples += (batch.size + batch.skipped) * self.world
            skipped += batch.skipped
            window.samples += batch.size * self.world
            batch = batch.to(self.device, non_blocking=True)
            if self.on_device is not None:
                batch = self.on_device(batch)
            with set_gradient_sync(self.forward_model, micro == self.cfg.grad_accum - 1):
                with self._autocast():
                    result = self.forward_model(batch, self.step)
                (result.loss / self.cfg.grad_accum).backward()
            self._guard(result.loss, None, None)
            results.append(result)
            window.add({"loss/total": result.loss, **result.losses, **result.metrics})
            window.schedule.update(result.schedule)
        average_gradients(self._replicated)  # FSDP's replicated 0-d parameters (temperatures)
        norm: Tensor | None
        if self.cfg.clip_grad_norm is not None:
            clipped = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
            norm = clipped.full_tensor() if isinstance(clipped, DTensor) else clipped  # FSDP2: sharded
            window.add({"grad_norm": norm})
        else:  # the largest |gradient| of this rank's shards (the ranks' flags are combined when read)
            norm = _largest([p.grad for p in self.model.parameters() if p.grad is not None])
        self.optimizer.step()
        self.scheduler.step()
        self.model.after_step(results)
        largest = _largest([p.detach() for p in self.model.parameters()])
        self._guard(None, norm, largest)
        if largest is not None:
            window.latest["weights/max_abs"] = largest
        return skipped

    def _probe_loss(self, batch: Batch) -> Tensor:
        batch = batch.to(self.device)
        if self.on_device is not None:
            batch = self.on_device(batch)
        with self._autocast():
            return self.model(batch, self.step).loss

    def _agree(self, stop: bool, skipped: int) -> tuple[bool, int]:
        """Whether any rank was asked to stop, and the samples all ranks skipped in this step (one
        small CPU collective per step on several processes)."""
        if self.world == 1:
            return stop, skipped
        votes = dist.all_reduce_cpu(torch.tensor([int(stop), skipped], dtype=torch.long))
        return bool(votes[0]), int(votes[1])

    def fit(self, resume: Path | None = None) -> dict[str, float]:
        """Train to ``cfg.steps`` (from ``resume`` if given); returns the final evaluation's metrics.

        Raises:
            Interrupted: SIGTERM / SIGINT arrived while training; a checkpoint was written (a
                :class:`KeyboardInterrupt`: see the module docstring).
            NonFiniteLoss: the loss, gradients or weights became NaN or infinite.
            TooManyBadSamples: more unreadable samples than ``max_bad_fraction`` allows.
        """
        if dist.is_main():
            self.paths.out.mkdir(parents=True, exist_ok=True)
            self.paths.recipe.write_text(self.recipe_yaml)
        if resume is not None:
            self.restore(resume)
        self.model.train()
        stop_step = self.cfg.stop_step
        try:
            with progress_bars.switched(self.progress), \
                    progress_bars.bar(stop_step, "training", unit="step", initial=self.step, leave=True) as bar:
                self._bar_shown = not bar.disable
                with _StopSignals() as stop:  # before the loader starts its workers: they inherit it
                    self._train(self.batches(self.samples), bar, stop)
                self.save()
                return self._evaluate()
        finally:
            if self._writer is not None:
                self._writer.close()

    def _train(self, batches: Iterator[Batch], bar: Any, stop: _StopSignals) -> None:
        """The steps from ``self.step`` to ``cfg.stop_step``."""
        if self.world > 1 and self.cfg.strategy == "ddp":
            first = next(batches)
            batches = itertools.chain([first], batches)
            if not self.cfg.find_unused_parameters:
                freeze_unused_parameters(self.model, lambda: self._probe_loss(first))
            self.forward_model, _ = wrap_model(self.model, "ddp", self.device,
                                               find_unused_parameters=self.cfg.find_unused_parameters)
        window = _Window()
        stop_step = self.cfg.stop_step
        while self.step < stop_step:
            skipped = self._train_step(batches, window)
            self.step += 1
            bar.update(1)
            asked_to_stop, skipped = self._agree(stop.signum is not None, skipped)
            self.skipped += skipped
            last = self.step == stop_step
            if self.step % self.cfg.log_every == 0 or last:
                self._log(window, bar)
                window = _Window()
            if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0 and not last:
                self.save()
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not last:
                self._check_finite()  # no evaluation of diverged weights
                self._evaluate()
            if asked_to_stop:
                raise Interrupted(stop.signum or signal.SIGTERM, self.save())
            if self.skipped >= MIN_BAD_SAMPLES and self.skipped > self.max_bad_fraction * self.samples:
                raise TooManyBadSamples(self.skipped, self.samples, self.max_bad_fraction, self.save())

    # ------------------------------------------------------------------ logging
    def writer(self) -> Any:
        """The TensorBoard writer (rank 0; other ranks get a no-op one)."""
        if not dist.is_main():
            return _NoWriter()
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.paths.tensorboard))
        return self._writer

    def _log(self, window: _Window, bar: Any) -> None:
        self._check_finite()
        seconds = max(time.perf_counter() - window.start, 1e-9)
        names = sorted(window.sums)
        sums = torch.stack([window.sums[k] for k in names]) / window.count
        if self.world > 1:  # averaged over ranks
            torch.distributed.all_reduce(sums)
            sums = sums / self.world
        scalars = dict(zip(names, sums.tolist(), strict=True))
        if window.latest:
            latest = sorted(window.latest)
            values = torch.stack([window.latest[k].float() for k in latest])
            if self.world > 1:  # the largest over ranks (each holds its shards)
                torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
            scalars.update(zip(latest, values.tolist(), strict=True))
        scalars.update({
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": window.samples / seconds,
            "time/data_s": window.data_seconds,
            "time/compute_s": seconds - window.data_seconds,
            "data/skipped_total": float(self.skipped),
            **window.schedule,
        })
        for key, value in scalars.items():
            self.writer().add_scalar(key, value, self.step)
        bar.set_postfix(loss=f"{scalars['loss/total']:.3f}", lr=f"{scalars['lr']:.2e}",
                        sps=f"{scalars['samples_per_s']:.0f}", refresh=False)
        if not self._bar_shown and dist.is_main():
            log.info("step %d/%d  loss %.4f  lr %.2e  %.1f samples/s", self.step, self.cfg.stop_step,
                     scalars["loss/total"], scalars["lr"], scalars["samples_per_s"])

    def _evaluate(self) -> dict[str, float]:
        """The recipe's evaluation, on every rank: retrieval deals its queries out over the ranks;
        other evaluations run whole on each rank (same result; FSDP needs every rank anyway)."""
        if self.evaluate is None:
            return {}
        self.model.eval()
        try:
            # FSDP with bf16 gathers bf16 weights: the evaluation then runs under the training autocast
            with unsharded(self.model), self._autocast() if self._fsdp else contextlib.nullcontext():
                metrics = self.evaluate()
        finally:
            self.model.train()
        for key, value in metrics.items():
            self.writer().add_scalar(f"eval/{key}", value, self.step)
        return metrics
