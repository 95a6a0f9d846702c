"""``DIR/report.md`` and ``DIR/curves.png`` of a finished run: its final metrics and its training curves
(every ``loss/*`` scalar, the learning rate, and evaluation metrics logged at several steps) read back
from the run's TensorBoard log, so a user can look rather than read logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("vlkit.train")

HEADLINE = ("r_mean", "txt_r1", "img_r1", "itc_r_mean", "swap_acc", "acc", "vqa_acc", "box_acc", "top1")


def scalars(run: Path, tag: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """``tag`` → ``[(step, value)]`` from ``run/tb`` (every scalar, or just ``tag``); empty when absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs each file it reaches the end of
    folder = run / "tb"
    if not folder.is_dir():
        return {}
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = [t for t in events.Tags().get("scalars", []) if tag is None or t == tag]
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}


def _plot_curves(series: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series:
        return False
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (tag, points) in zip(axes.flat, series.items(), strict=False):
        ax.plot([s for s, _ in points], [v for _, v in points])
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def provenance_lines(record: dict[str, Any]) -> list[str]:
    """The report's "Produced by" section: code, recipe hash, libraries, device, and the evaluation data."""
    from vlkit.provenance import summary

    lines = ["", "## Produced by", "", summary(record) + "."]
    data = record.get("eval_data")
    if data:
        files = "; ".join(f"`{f['path']}` ({f.get('bytes', '?')} bytes"
                          + (f", sha256 {f['sha256'][:12]}" if "sha256" in f else "")
                          + (f", {f['files']} files" if "files" in f else "") + ")" for f in data.get("files", []))
        counts = ", ".join(f"{k} {v:g}" for k, v in data.get("counts", {}).items())
        lines.append(f"Evaluated on split `{data.get('split')}`: {files or 'no files'}" + (f"; {counts}" if counts
                                                                                          else "") + ".")
    lines.append("Full record: `provenance` in metrics.json.")
    return lines


def write_run_report(out: Path, metrics: dict[str, Any], description: str = "",
                     provenance: dict[str, Any] | None = None) -> Path:
    """Write ``out/report.md`` (and ``out/curves.png`` when the run logged curves); returns the report.
    ``provenance`` (:func:`vlkit.provenance.record`) adds what produced the figures."""
    logged = scalars(out)
    curves = {t: p for t, p in sorted(logged.items())
              if (t.startswith("loss/") or t == "lr" or t.startswith("eval/")) and len(p) >= 2}
    drew = _plot_curves(curves, out / "curves.png")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    first = [k for k in HEADLINE if k in numbers]
    lines = [f"# {out.name}", ""] + ([description, ""] if description else [])
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| **{k}** | {numbers[k]:.4g} |" for k in first]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(numbers.items()) if k not in first]
    if drew:
        lines += ["", "![training curves](curves.png)", "",
                  "Curves: " + ", ".join(f"`{t}`" for t in curves) + " (TensorBoard: `tb/`)."]
    if provenance is not None:
        lines += provenance_lines(provenance)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
