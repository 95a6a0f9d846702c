"""Writing benchmark results: ``bench.json`` (every figure) and ``bench.md`` (a table to paste)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _gf(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e9:.4g}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def markdown(result: dict[str, Any], command: str) -> str:
    """A short report: headline table, breakdown, environment and the command."""
    env = result["environment"]
    hardware = env.get("gpu") or env.get("cpu", "")
    lines = [
        f"# vlkit bench: {result['recipe']}", "",
        f"`{command}`", "",
        "| samples/s | step ms (median, p10–p90) | executed GF/sample | reference GF/sample | executed/ref | MFU "
        "| effective MFU | peak memory | backend | precision | batch | text len |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['samples_per_s']:.1f} | {result['step_ms_median']:.1f} ({result['step_ms_p10']:.1f}–"
        f"{result['step_ms_p90']:.1f}) | {_gf(result['executed_flops_per_sample'])} | "
        f"{_gf(result['reference_flops_per_sample'])} | "
        f"{'—' if result['executed_over_reference'] is None else format(result['executed_over_reference'], '.3f')} | "
        f"{_pct(result['mfu'])} | {_pct(result['effective_mfu'])} | {result['peak_mem_bytes'] / 2**20:.0f} MiB "
        f"({result['peak_mem_kind']}) | {result['backend']} | {result['precision']} | {result['batch_size']} | "
        f"{result['text_len_mean']:.1f} |", "",
        f"Peak {result['peak_flops'] / 1e12:.2f} TFLOP/s ({result['peak_flops_source']}); MFU = executed FLOPs × "
        "samples/s / peak; effective MFU uses the official step's reference FLOPs.", "",
    ]
    if result["breakdown_ms"]:
        lines += ["| range (ms per step; objective/* and teacher lie inside phase/forward) | ms |", "|---|---|"]
        lines += [f"| {name} | {ms:.2f} |" for name, ms in result["breakdown_ms"].items()]
        lines.append("")
    lines.append(f"Machine: {hardware}; " + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("gpu", "cpu")))
    lines += ["", *what_ran_lines(result)]
    return "\n".join(lines) + "\n"


def what_ran_lines(result: dict[str, Any]) -> list[str]:
    """The annotation stand-ins, the work the timed step left out, and what produced the figures."""
    from vlkit.provenance import summary

    lines = []
    if result.get("stand_ins"):
        lines.append("Annotation stand-ins: " + "; ".join(f"`{k}`: {v}" for k, v in result["stand_ins"].items()) + ".")
    omitted = result.get("omitted_work", [])
    lines.append("**Omitted work** (the timed step does less than a real one): " + "; ".join(omitted) + "."
                 if omitted else "Omitted work: none (every objective had its inputs).")
    if result.get("provenance"):
        lines.append(f"Produced by: {summary(result['provenance'])}.")
    return lines


def write(out: Path, result: dict[str, Any], command: str) -> None:
    """``out/bench.json`` and ``out/bench.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({**result, "command": command}, indent=2, sort_keys=True) + "\n")
    (out / "bench.md").write_text(markdown(result, command))
