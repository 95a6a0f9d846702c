"""``vlkit bench --sweep``: attention backends × batch sizes × text lengths, a table and two plots.

Each point is a full benchmark without the profiler pass (``profile_steps`` 0), all against one peak
(measured once, or given). Writes ``sweep.json`` (every point's figures), ``sweep.md`` (a table) and
``samples_per_s.png`` / ``mfu.png`` (one line per backend and text length, batch size on the x axis).
Backends a device cannot run (xformers without CUDA) are listed as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from vlkit.bench.report import rate, reliability
from vlkit.bench.throughput import BenchSettings, measure_peak_flops, run_benchmark
from vlkit.nn.attention import BACKENDS, is_backend, xformers_available
from vlkit.recipe import Recipe

log = logging.getLogger("vlkit.bench")


def default_backends(device: torch.device) -> list[str]:
    """``sdpa`` and ``math`` everywhere, ``xformers`` on CUDA when installed."""
    return ["sdpa", "math"] + (["xformers"] if device.type == "cuda" and xformers_available() else [])


def with_backend(recipe: Recipe, backend: str) -> Recipe:
    """``recipe`` with ``encoder.attention`` set to ``backend``."""
    if not is_backend(backend):
        raise ValueError(f"unknown attention backend `{backend}`; valid: {', '.join(BACKENDS)}")
    return dataclasses.replace(recipe, encoder=dataclasses.replace(recipe.encoder, attention=backend))


def run_sweep(recipe: Recipe, args: argparse.Namespace, device: torch.device, settings: BenchSettings, out: Path,
              command: str) -> list[dict[str, Any]]:
    backends = args.sweep_backends or default_backends(device)
    batch_sizes = args.sweep_batch_sizes or sorted({max(1, settings.batch_size // 2), settings.batch_size})
    text_lens = args.sweep_text_lens or [settings.text_len or 32]
    peak = settings.peak_tflops * 1e12 if settings.peak_tflops else measure_peak_flops(device)
    points: list[dict[str, Any]] = []
    for backend in backends:
        if backend == "xformers" and not (device.type == "cuda" and xformers_available()):
            points.append({"backend": backend, "skipped": f"xformers has no kernels on {device.type} or is not "
                           "installed"})
            continue
        for text_len in text_lens:
            for batch in batch_sizes:
                point = dataclasses.replace(settings, batch_size=batch, text_len=text_len, profile_steps=0,
                                            peak_tflops=peak / 1e12)
                log.info("sweep: %s, batch %d, text %d", backend, batch, text_len)
                result = run_benchmark(with_backend(recipe, backend), device, point)
                checks = reliability({**result, "peak_flops_source": "given" if settings.peak_tflops else "measured"})
                points.append({"backend": backend, "batch_size": batch, "text_len": text_len,
                               **{k: result[k] for k in ("samples_per_s", "step_ms_median", "step_ms_p10",
                                                         "step_ms_p90", "mfu", "effective_mfu", "peak_mem_bytes",
                                                         "executed_flops_per_sample", "reference_flops_per_sample",
                                                         "precision", "environment")},
                               "mfu_reliable": checks["mfu_reliable"], "warnings": checks["warnings"]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"command": command, "peak_flops": peak, "points": points}, indent=2)
                                    + "\n")
    (out / "sweep.md").write_text(sweep_markdown(points, command, peak))
    plot(points, out)
    print(sweep_markdown(points, command, peak))
    return points


def sweep_markdown(points: list[dict[str, Any]], command: str, peak: float) -> str:
    lines = [f"`{command}` (peak {rate(peak)})", "",
             "| backend | batch | text len | samples/s | step ms (median, p10–p90) | MFU | effective MFU "
             "| peak memory |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        if "skipped" in p:
            lines.append(f"| {p['backend']} | — | — | skipped: {p['skipped']} | | | | |")
            continue
        eff = "—" if p["effective_mfu"] is None else f"{100 * p['effective_mfu']:.1f}%"
        flag = "" if p.get("mfu_reliable", True) else " (unreliable)"
        lines.append(f"| {p['backend']} | {p['batch_size']} | {p['text_len']} | {p['samples_per_s']:.1f} | "
                     f"{p['step_ms_median']:.1f} ({p['step_ms_p10']:.1f}–{p['step_ms_p90']:.1f}) | "
                     f"{100 * p['mfu']:.1f}%{flag} | {eff}{flag} | {p['peak_mem_bytes'] / 2**20:.0f} MiB |")
    flagged = [p for p in points if p.get("warnings")]
    if flagged:
        lines += ["", f"**Warning: MFU unreliable at {len(flagged)} of {len(points)} point(s)** "
                  "(the rules: `vlkit.bench.report.reliability`):", ""]
        lines += [f"- {p['backend']}, batch {p['batch_size']}, text {p['text_len']}: " + "; ".join(p["warnings"])
                  for p in flagged]
    return "\n".join(lines) + "\n"


def plot(points: list[dict[str, Any]], out: Path) -> None:
    """``samples_per_s.png`` and ``mfu.png``: one line per (backend, text length) over batch sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [p for p in points if "skipped" not in p]
    series: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for p in measured:
        series.setdefault((p["backend"], p["text_len"]), []).append(p)
    for key, label, scale in (("samples_per_s", "samples/s", 1.0), ("mfu", "MFU (%)", 100.0)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (backend, text_len), rows in sorted(series.items()):
            rows = sorted(rows, key=lambda r: r["batch_size"])
            ax.plot([r["batch_size"] for r in rows], [scale * r[key] for r in rows], marker="o",
                    label=f"{backend}, L={text_len}")
        ax.set_xlabel("batch size per device")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{key}.png", dpi=120)
        plt.close(fig)
