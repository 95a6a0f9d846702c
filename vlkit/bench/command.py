"""``vlkit bench``: one benchmark, or a sweep over attention backends × batch sizes × text lengths."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from vlkit.bench import report
from vlkit.bench.throughput import BenchSettings, run_benchmark
from vlkit.recipe import resolve
from vlkit.train.devices import resolve_device, set_cpu_threads

log = logging.getLogger("vlkit.bench")


def run_bench_command(args: argparse.Namespace) -> int:
    recipe = resolve(args.recipe, args.overrides).recipe  # recipe errors surface here, before any work
    device = resolve_device(recipe.train.device)
    if device.type == "cpu":
        set_cpu_threads(recipe.train.cpu_threads, 0)
    command = "vlkit bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "vlkit bench"
    settings = BenchSettings(steps=args.steps, warmup=args.warmup, profile_steps=args.profile_steps,
                             batch_size=args.batch_size or recipe.train.batch_size, text_len=args.text_len,
                             peak_tflops=args.peak_tflops)
    out = Path(args.out)
    if args.flops_only:
        from vlkit.bench.throughput import count_flops

        counted = {**count_flops(recipe, settings), "recipe": args.recipe, "overrides": list(args.overrides)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "flops.json").write_text(json.dumps({**counted, "command": command}, indent=2, sort_keys=True) + "\n")
        ratio = counted["executed_over_reference"]
        print(f"executed {counted['executed_flops_per_sample'] / 1e9:.2f} GFLOP/sample, reference "
              f"{(counted['reference_flops_per_sample'] or 0) / 1e9:.2f}" + (f" (ratio {ratio:.3f})" if ratio else ""))
        for line in counted["omitted_work"]:
            print(f"omitted work: {line}")
        return 0
    if args.sweep:
        from vlkit.bench.sweep import run_sweep

        run_sweep(recipe, args, device, settings, out, command)
        return 0
    log.info("benchmarking %s on %s: batch %d, %d warm-up + %d timed steps", args.recipe, device,
             settings.batch_size, settings.warmup, settings.steps)
    result = run_benchmark(recipe, device, settings)
    result.update(recipe=args.recipe, overrides=list(args.overrides))
    report.write(out, result, command)
    print(report.markdown(result, command))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 0
