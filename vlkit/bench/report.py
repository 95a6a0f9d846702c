"""Writing benchmark results: ``bench.json`` (every figure) and ``bench.md`` (a table to paste).

Both say whether MFU can be trusted (:func:`reliability`, ``reliability`` and ``mfu_reliable`` in
``bench.json``). MFU is marked unreliable when

- the timed steps spread widely: coefficient of variation (sample std / mean) above
  :data:`SPREAD_CV` or slowest / fastest step above :data:`SPREAD_RATIO` (a busy or throttling
  machine: the median no longer describes the step);
- the peak is implausibly low: the step itself ran faster than the peak (MFU above 100%), a GPU's peak
  is below :data:`PLAUSIBLE_FRACTION` of its datasheet figure (:data:`DATASHEET_TFLOPS`, dense BF16), or
  a CPU's below :data:`CPU_MIN_GFLOPS_PER_THREAD` GFLOP/s per intra-op thread (any core with SIMD does
  several times that on a 1024³ fp32 matmul).

``bench.md`` also explains an executed/reference FLOP ratio above 1: the reference formula counts the
official models' linear patch embedding, and vlkit's tiny recipes use a convolutional stem
(:func:`vlkit.bench.flops.image_stem` counts its extra work).
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from pathlib import Path
from typing import Any

from vlkit.train.run_report import number

log = logging.getLogger("vlkit.bench")

SPREAD_CV = 0.10
"""Step times whose coefficient of variation exceeds this are too spread to trust."""
SPREAD_RATIO = 1.5
"""Step times whose slowest / fastest exceeds this are too spread to trust."""
MIN_SPREAD_STEPS = 3
"""Fewer timed steps than this cannot show a spread (said in a note, not marked unreliable)."""
PLAUSIBLE_FRACTION = 0.25
"""A GPU's measured peak below this fraction of its datasheet figure is implausible."""
CPU_MIN_GFLOPS_PER_THREAD = 2.0
"""A CPU's measured peak below this many GFLOP/s per intra-op thread is implausible."""
DATASHEET_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
)
"""GPU name pattern → (model, dense BF16 tensor-core TFLOP/s from the vendor's datasheet); first match wins."""


def rate(flops_per_s: float | None) -> str:
    """``194 GFLOP/s``, ``712 TFLOP/s``, ``1.25 TFLOP/s``: three significant digits, in the unit that fits."""
    if flops_per_s is None:
        return "—"
    if flops_per_s >= 1e12:
        return f"{number(flops_per_s / 1e12, 3)} TFLOP/s"
    return f"{number(flops_per_s / 1e9, 3)} GFLOP/s"


def _gf(x: float | None) -> str:
    return "—" if x is None else number(x / 1e9)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def datasheet_peak(gpu: str | None) -> tuple[str, float] | None:
    """(model, FLOP/s) of a GPU's dense BF16 datasheet peak, or None when the name is not in the table."""
    if not gpu:
        return None
    for pattern, model, tflops in DATASHEET_TFLOPS:
        if re.search(pattern, gpu):
            return model, tflops * 1e12
    return None


def reliability(result: dict[str, Any]) -> dict[str, Any]:
    """Whether the benchmark's MFU can be trusted, with the figures the rules read (module docstring):
    ``mfu_reliable``, ``warnings`` (each rule that fired, in words), ``notes`` (caveats that do not mark
    MFU unreliable), ``step_ms_cv``, ``step_ms_max_over_min``, ``achieved_flops_per_s``,
    ``datasheet_peak_flops`` / ``datasheet_model`` (GPUs in :data:`DATASHEET_TFLOPS`) and ``rules``."""
    warnings: list[str] = []
    notes: list[str] = []
    times = [float(t) for t in result.get("step_ms_all") or []]
    cv = ratio = None
    if len(times) >= 2 and min(times) > 0:
        cv = statistics.stdev(times) / statistics.fmean(times)
        ratio = max(times) / min(times)
    if len(times) < MIN_SPREAD_STEPS:
        notes.append(f"only {len(times)} timed step(s): too few to tell whether the machine was quiet "
                     "(time more with --steps)")
    elif cv is not None and ratio is not None and (cv > SPREAD_CV or ratio > SPREAD_RATIO):
        warnings.append(f"step times spread widely over {len(times)} steps (coefficient of variation "
                        f"{100 * cv:.0f}%, slowest/fastest {ratio:.2f}; the rule: above {100 * SPREAD_CV:.0f}% or "
                        f"{SPREAD_RATIO:g}): the machine was busy or throttling, so samples/s and MFU describe it, "
                        "not the step; rerun on an idle machine")
    peak = result.get("peak_flops")
    given = result.get("peak_flops_source") == "given"
    what = "the given peak (--peak-tflops)" if given else "the measured peak"
    executed = result.get("executed_flops_per_sample")
    achieved = executed * result["samples_per_s"] if executed and result.get("samples_per_s") else None
    env = result.get("environment", {})
    sheet = datasheet_peak(env.get("gpu"))
    if peak and achieved and achieved > peak:
        warnings.append(f"the step ran at {rate(achieved)}, above {what} of {rate(peak)} (MFU over 100%): the peak "
                        "is too low" + ("" if given else " (the probe ran while the machine was busy)"))
    if peak and sheet is not None and peak < PLAUSIBLE_FRACTION * sheet[1]:
        warnings.append(f"{what} of {rate(peak)} is below {100 * PLAUSIBLE_FRACTION:.0f}% of the {sheet[0]}'s "
                        f"datasheet {rate(sheet[1])} (dense BF16): implausibly low for the device")
    threads = env.get("threads")
    if peak and not env.get("gpu") and isinstance(threads, int) and threads > 0 \
            and peak < CPU_MIN_GFLOPS_PER_THREAD * 1e9 * threads:
        warnings.append(f"{what} of {rate(peak)} is below {CPU_MIN_GFLOPS_PER_THREAD:g} GFLOP/s per thread "
                        f"({threads} threads): implausibly low for a CPU (the probe ran while the machine was busy)")
    return {"mfu_reliable": not warnings, "warnings": warnings, "notes": notes, "step_ms_cv": cv,
            "step_ms_max_over_min": ratio, "achieved_flops_per_s": achieved,
            "datasheet_peak_flops": sheet[1] if sheet else None, "datasheet_model": sheet[0] if sheet else None,
            "rules": f"MFU unreliable when step times have a coefficient of variation above {100 * SPREAD_CV:.0f}% "
                     f"or slowest/fastest above {SPREAD_RATIO:g} (with at least {MIN_SPREAD_STEPS} timed steps), "
                     f"when the step runs faster than the peak, or when the peak is below "
                     f"{100 * PLAUSIBLE_FRACTION:.0f}% of a known GPU's dense BF16 datasheet figure or below "
                     f"{CPU_MIN_GFLOPS_PER_THREAD:g} GFLOP/s per CPU thread"}


def ratio_note(result: dict[str, Any]) -> str | None:
    """Why executed/reference exceeds 1, or None when it does not."""
    ratio = result.get("executed_over_reference")
    if ratio is None or ratio <= 1:
        return None
    text = (f"**Executed/reference {ratio:.3f} > 1**: vlkit executes more FLOPs than the reference formula counts "
            "for the official step.")
    stem = result.get("image_stem")
    reference = result.get("reference_flops_per_sample")
    executed = result.get("executed_flops_per_sample")
    if stem and reference and executed:
        extra = stem["extra_gflops_per_sample"] * 1e9
        passes = "online forward and backward" + (", teacher forward" if stem.get("teacher") else "")
        text += (f" The reference counts a linear patch embedding ({number(stem['patch_gflops_forward'] * 1e3)} "
                 f"MFLOP per image per forward pass); this recipe's `{stem['key']}: {stem['stem']}` runs 3×3 "
                 f"convolutions of {number(stem['stem_gflops_forward'] * 1e3)} MFLOP instead, which adds "
                 f"{number(extra / 1e6)} MFLOP per sample ({passes}; counted on the meta device). Without that, "
                 f"executed/reference would be {(executed - extra) / reference:.3f}.")
        if (executed - extra) / reference > 1:
            text += " The rest is work the reference formula does not model (vlkit/bench/flops.py lists its terms)."
    else:
        text += (" The reference formula counts only the terms listed in vlkit/bench/flops.py; the executed count "
                 "(FlopCounterMode) includes every matmul, convolution and attention product of the step, and "
                 "the difference is not broken down here.")
    return text


def markdown(result: dict[str, Any], command: str) -> str:
    """A short report: headline table, warnings, the FLOP notes, breakdown, environment and the command."""
    env = result["environment"]
    hardware = env.get("gpu") or env.get("cpu", "")
    checks = reliability(result)
    flag = "" if checks["mfu_reliable"] else " (unreliable)"
    lines = [
        f"# vlkit bench: {result['recipe']}", "",
        f"`{command}`", "",
        "| samples/s | step ms (median, p10–p90) | executed GF/sample | reference GF/sample | executed/ref | MFU "
        "| effective MFU | peak memory | backend | precision | batch | text len |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['samples_per_s']:,.1f} | {result['step_ms_median']:,.1f} ({result['step_ms_p10']:,.1f}–"
        f"{result['step_ms_p90']:,.1f}) | {_gf(result['executed_flops_per_sample'])} | "
        f"{_gf(result['reference_flops_per_sample'])} | "
        f"{'—' if result['executed_over_reference'] is None else format(result['executed_over_reference'], '.3f')} | "
        f"{_pct(result['mfu'])}{flag} | {_pct(result['effective_mfu'])}"
        f"{flag if result['effective_mfu'] is not None else ''} | "
        f"{number(result['peak_mem_bytes'] / 2**20, 3)} MiB ({result['peak_mem_kind']}) | {result['backend']} | "
        f"{result['precision']} | {result['batch_size']} | {result['text_len_mean']:.1f} |", "",
    ]
    sheet = ""
    if checks["datasheet_peak_flops"]:
        sheet = (f"; the {checks['datasheet_model']}'s datasheet: {rate(checks['datasheet_peak_flops'])} dense BF16, "
                 f"{100 * result['peak_flops'] / checks['datasheet_peak_flops']:.0f}% of it")
    lines += [f"Peak {rate(result['peak_flops'])}, {result['peak_flops_source']}{sheet}. MFU = executed FLOPs × "
              "samples/s / peak; effective MFU uses the official step's reference FLOPs.", ""]
    if checks["warnings"]:
        lines += ["**Warning: MFU unreliable.** " + " ".join(f"{w[0].upper()}{w[1:]}." for w in checks["warnings"]),
                  ""]
    if checks["notes"]:
        lines += ["Note: " + "; ".join(checks["notes"]) + ".", ""]
    if checks["step_ms_cv"] is not None:
        lines += [f"Step-time spread: coefficient of variation {100 * checks['step_ms_cv']:.1f}%, slowest/fastest "
                  f"{checks['step_ms_max_over_min']:.2f} over {len(result['step_ms_all'])} steps ({checks['rules']}).",
                  ""]
    if note := ratio_note(result):
        lines += [note, ""]
    if result["breakdown_ms"]:
        lines += ["| range (ms per step; objective/* and teacher lie inside phase/forward) | ms |", "|---|---|"]
        lines += [f"| {name} | {ms:,.2f} |" for name, ms in result["breakdown_ms"].items()]
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
    """``out/bench.json`` (with ``reliability`` and ``mfu_reliable``) and ``out/bench.md``; each reason MFU is
    unreliable is also logged."""
    checks = reliability(result)
    for warning in checks["warnings"]:
        log.warning("bench: MFU unreliable: %s", warning)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({**result, "command": command, "reliability": checks,
                                                "mfu_reliable": checks["mfu_reliable"]}, indent=2, sort_keys=True)
                                    + "\n")
    (out / "bench.md").write_text(markdown(result, command))
