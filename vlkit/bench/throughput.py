"""``vlkit bench``: how fast a recipe trains on this machine, and where the time goes.

One benchmark: build the recipe's model and optimizer on the device, make a pool of synthetic batches
there (:mod:`vlkit.bench.batches`), run warm-up steps, time ``steps`` training steps (CUDA events on a
GPU, the wall clock on the CPU; median and p10/p90), profile a few more for the per-phase and
per-objective breakdown, count one step's executed FLOPs, and relate them to the official step's
reference FLOPs and to the device's peak (measured with a matmul probe unless given).

Progress: a bar per phase (warm-up, timed steps, profiled steps, the FLOP count; :mod:`vlkit.progress`);
the timed steps are counted outside the timed region. The profiler's own console lines (Kineto's
``USDT:`` / ``STAGE:`` lines and its GPU probe, printed by C++ straight to file descriptor 2) are
captured while it starts and stops and logged at debug level (``vlkit -v`` shows them).

A step is forward (every objective; the momentum teacher inside), backward, clipping, the optimizer
step and the EMA / queue update, at a steady-state step index (teacher consulted, ramps finished).
Annotations the objectives read get stand-ins (``stand_ins`` in the result); work the synthetic batches
cannot give an objective is listed in ``omitted_work`` (and logged): the figures then time less than a
real step.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlkit import progress, provenance
from vlkit.bench.batches import omitted_work, stand_ins, synthetic_batches
from vlkit.bench.flops import image_stem, reference_flops
from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.batch import Batch
from vlkit.models.model import PretrainModel
from vlkit.nn.attention import resolve_backend
from vlkit.nn.checkpointing import compile_blocks
from vlkit.recipe import Recipe
from vlkit.train.optim import build_optimizer

log = logging.getLogger("vlkit.bench")

STEADY_STEP = 1_000_000
"""Step index of benchmark steps: past every warm-up and ramp (teacher, distillation, hard negatives)."""


@dataclass(kw_only=True)
class BenchSettings:
    """What to run.

    Attributes:
        steps: timed steps.
        warmup: untimed steps first (allocator growth, kernel selection, compilation).
        batch_size: samples per step on this device.
        profile_steps: further steps under the profiler for the breakdown (0: none).
        text_len: every caption this many tokens (None: the realistic length histogram).
        peak_tflops: the device's peak in TFLOP/s for MFU (None: measure with a matmul probe).
        pool: distinct synthetic batches cycled through (inputs not all cache-resident).
    """

    steps: int = 20
    warmup: int = 5
    batch_size: int = 64
    profile_steps: int = 3
    text_len: int | None = None
    peak_tflops: float | None = None
    pool: int = 4


class BenchRun:
    """A recipe's model, optimizer and synthetic batches on ``device``, and one training step."""

    def __init__(self, recipe: Recipe, device: torch.device, settings: BenchSettings) -> None:
        if not recipe.objectives:
            raise ValueError("vlkit bench measures pre-training steps: the recipe has no objectives")
        self.recipe, self.device, self.settings = recipe, device, settings
        torch.manual_seed(recipe.seed)
        with device if device.type == "meta" else contextlib.nullcontext():  # meta: shapes only, no memory
            encoder = build_encoder(recipe.encoder, load_weights=False)  # timing needs no pre-trained weights
            vocab = encoder.word_embeddings().num_embeddings
            self.model: PretrainModel = build_pretrain_model(encoder, recipe.objectives, recipe.momentum)
        self.model.to(device)
        if recipe.train.compile:
            compile_blocks(self.model, recipe.train.compile_mode)
        self.model.train()
        self.optimizer = build_optimizer(self.model, recipe.train, device)
        bf16 = recipe.train.precision == "bf16" or (recipe.train.precision == "auto" and device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        batches = synthetic_batches(recipe, self.model.loader_requests(), settings.batch_size, device,
                                    vocab_size=vocab, seed=recipe.seed, text_len=settings.text_len)
        self.pool: list[Batch] = [next(batches) for _ in range(settings.pool)]
        self.calls = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def next_batch(self) -> Batch:
        batch = self.pool[self.calls % len(self.pool)]
        self.calls += 1
        return batch

    def forward_backward(self, batch: Batch) -> Any:
        with torch.profiler.record_function("phase/forward"), self._autocast():
            result = self.model(batch, STEADY_STEP)
        with torch.profiler.record_function("phase/backward"):
            result.loss.backward()
        return result

    def step(self) -> None:
        """One training step on the next pooled batch."""
        self.optimizer.zero_grad(set_to_none=True)
        result = self.forward_backward(self.next_batch())
        with torch.profiler.record_function("phase/optimizer"):
            if self.recipe.train.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.train.clip_grad_norm)
            self.optimizer.step()
        with torch.profiler.record_function("phase/ema_queue"):
            self.model.after_step(result)

    def text_width(self) -> float:
        """Mean padded text length of the pooled batches."""
        widths = []
        for b in self.pool:
            if b.input_ids is None:
                raise ValueError("a pooled benchmark batch has no text")
            widths.append(b.input_ids.shape[1])
        return statistics.fmean(widths)


def time_steps(step: Callable[[], object], n: int, device: torch.device,
               done: Callable[[int], object] = lambda n: None) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``step`` (its result unused; CUDA events on a GPU: one sync
    at the end). ``done(1)`` is called after each step, outside the timed region (a progress bar)."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            step()
            end.record()
            done(1)
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(1000 * (time.perf_counter() - t0))
        done(1)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def executed_flops(run: BenchRun) -> float:
    """Matmul FLOPs of one forward + backward (teacher included) on the next pooled batch, per sample."""
    batch = run.next_batch()
    run.optimizer.zero_grad(set_to_none=True)
    with progress.bar(1, "counting FLOPs", unit="step", show=run.device.type != "meta") as bar, \
            FlopCounterMode(display=False) as counter:
        run.forward_backward(batch)
        bar.update(1)
    run.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch.size


def measure_peak_flops(device: torch.device) -> float:
    """FLOP/s of a large matmul: bf16 8192³ on a GPU, fp32 1024³ on the CPU (the training dtypes)."""
    n, dtype, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (1024, torch.float32, 8)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = time_steps(lambda: a @ b, reps, device)
    return 2 * n**3 / (statistics.median(times) / 1000)


def breakdown(run: BenchRun, steps: int) -> dict[str, float]:
    """Milliseconds per step of each profiled range (phases, objectives, the teacher); device time on a GPU.
    Ranges nest: ``objective/*`` and ``teacher`` lie inside ``phase/forward``."""
    if steps <= 0:
        return {}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if run.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities)
    with progress.bar(steps, "profiling", unit="step") as bar:
        with quiet_profiler():
            prof.start()
        try:
            for _ in range(steps):
                run.step()
                bar.update(1)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
        finally:
            with quiet_profiler():
                prof.stop()
    out = {}
    for event in prof.key_averages():
        if event.key.startswith(("phase/", "objective/", "teacher")):
            total = event.device_time_total if run.device.type == "cuda" else event.cpu_time_total
            out[event.key] = total / 1000 / steps
    return dict(sorted(out.items()))


def quiet_profiler() -> contextlib.AbstractContextManager[None]:
    """Around the profiler's start and stop: Kineto prints ``USDT:`` / ``STAGE:`` lines (and on a machine
    without a GPU an ``ERROR: gpuGetDeviceCount failed`` probe) from C++ straight to file descriptor 2,
    past logging. Its ``KINETO_LOG_LEVEL`` is read once, when torch loads, so it cannot be set here; the
    lines are captured instead and logged at debug level (``vlkit -v``)."""
    return progress.native_stderr_to_log(log, logging.DEBUG)


def environment(device: torch.device, backend: str) -> dict[str, Any]:
    """Versions and hardware the figures belong to."""
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "attention_backend": backend, "threads": torch.get_num_threads()}
    try:
        env["xformers"] = importlib.metadata.version("xformers")
    except importlib.metadata.PackageNotFoundError:
        env["xformers"] = None
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
    else:
        env["cpu"] = _cpu_name()
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def count_flops(recipe: Recipe, settings: BenchSettings) -> dict[str, Any]:
    """Executed and reference FLOPs per sample of one step, on the meta device (no memory, no compute:
    any model size, in seconds)."""
    run = BenchRun(recipe, torch.device("meta"), settings)
    executed = executed_flops(run)
    width = run.text_width()
    reference = reference_flops(recipe.encoder, recipe.objectives, round(width), settings.batch_size)
    ref_total = reference["total"] if reference else None
    return {"executed_flops_per_sample": executed, "reference_flops_per_sample": ref_total,
            "reference_parts": reference, "executed_over_reference": executed / ref_total if ref_total else None,
            "batch_size": settings.batch_size, "text_len_mean": width, **_what_ran(recipe, torch.device("meta"))}


def _what_ran(recipe: Recipe, device: torch.device) -> dict[str, Any]:
    """The annotation stand-ins, the work left out (logged when any) and the provenance of a benchmark."""
    omitted = omitted_work(dict(recipe.objectives))
    for line in omitted:
        log.warning("bench: %s", line)
    return {"stand_ins": stand_ins(dict(recipe.objectives)), "omitted_work": omitted,
            "image_stem": image_stem(recipe.encoder, recipe.objectives),  # work the reference does not count
            "provenance": provenance.record(recipe_yaml=recipe.to_yaml(), seed=recipe.seed, step=STEADY_STEP,
                                            device=device, world_size=1)}


def run_benchmark(recipe: Recipe, device: torch.device, settings: BenchSettings) -> dict[str, Any]:
    """Build, warm up, time, profile and count; returns the figures ``bench.json`` holds."""
    backend = resolve_backend(recipe.encoder.attention, device)
    run = BenchRun(recipe, device, settings)
    with progress.bar(settings.warmup, "warm-up", unit="step") as bar:
        for _ in range(settings.warmup):
            run.step()
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
    with progress.bar(settings.steps, "timed steps", unit="step") as bar:
        times = time_steps(run.step, settings.steps, device, bar.update)
    peak_mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    phases = breakdown(run, settings.profile_steps)
    executed = executed_flops(run)
    width = run.text_width()
    reference = reference_flops(recipe.encoder, recipe.objectives, round(width), settings.batch_size)
    peak = settings.peak_tflops * 1e12 if settings.peak_tflops else measure_peak_flops(device)
    median = statistics.median(times)
    samples_per_s = settings.batch_size / (median / 1000)
    ref_total = reference["total"] if reference else None
    return {
        "samples_per_s": samples_per_s,
        "step_ms_median": median,
        "step_ms_p10": percentile(times, 0.1),
        "step_ms_p90": percentile(times, 0.9),
        "executed_flops_per_sample": executed,
        "reference_flops_per_sample": ref_total,
        "reference_parts": reference,
        "executed_over_reference": executed / ref_total if ref_total else None,
        "mfu": executed * samples_per_s / peak,
        "effective_mfu": ref_total * samples_per_s / peak if ref_total else None,
        "peak_flops": peak,
        "peak_flops_source": "given" if settings.peak_tflops else "measured (matmul probe)",
        "peak_mem_bytes": int(peak_mem),
        "peak_mem_kind": "max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "backend": backend,
        "device": str(device),
        "batch_size": settings.batch_size,
        "text_len_mean": width,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "precision": "bf16" if run.autocast_dtype is not None else "fp32",
        "breakdown_ms": phases,
        "step_ms_all": times,
        "environment": environment(device, backend),
        **_what_ran(recipe, device),
    }
