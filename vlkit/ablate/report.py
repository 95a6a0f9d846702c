"""The comparison an ablation hands back: ``results.md`` (variants × metrics, mean ± std over seeds,
the best per column in bold), ``results.csv`` (one row per run), a bar chart per metric with error
bars, and training-loss / evaluation curves of every variant overlaid, read from the runs' TensorBoard
logs. Everything is drawn from the finished runs under ``DIR/runs`` and ``DIR/grid.json``.

Every row of ``results.csv`` carries what produced it (the run's ``provenance``: vlkit version and
commit, recipe hash, evaluation-data fingerprint, libraries, device, world size, seed, step), and
runs evaluated on different data are never put in one table (:class:`IncomparableRuns`, naming the
runs and the difference)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from vlkit.core.errors import UserError
from vlkit.provenance import data_key
from vlkit.provenance import summary as provenance_summary
from vlkit.train.run_report import scalars as run_scalars

log = logging.getLogger("vlkit.ablate")

BOOKKEEPING = {"steps", "samples", "images_skipped", "annotations_skipped", "n_images", "n_texts", "n_swaps",
               "chance_r1", "step", "n", "n_skipped", "majority_acc", "n_skipped_annotations"}
PROVENANCE_COLUMNS = ("vlkit", "git_commit", "dirty", "recipe_sha256", "eval_data_sha256", "torch", "timm",
                      "transformers", "device", "world_size", "seed", "step")
"""What ``results.csv`` records of each run's (and follow-up's) provenance."""


class IncomparableRuns(UserError):
    """Runs of one table were evaluated on different data."""


def descriptive(column: str) -> bool:
    """A column that describes a variant rather than scores it (``encoder_parameters``): shown as an
    integer, never marked best."""
    return column.endswith("parameters")


def run_metrics(run: Path, followups: list[str]) -> dict[str, float] | None:
    """A finished run's metrics (follow-ups' prefixed ``name/``), or None when it has not finished."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    metrics = {k: float(v) for k, v in json.loads(path.read_text()).items() if isinstance(v, int | float)}
    for name in followups:
        extra = run / name / "metrics.json"
        if extra.is_file():
            metrics.update({f"{name}/{k}": float(v) for k, v in json.loads(extra.read_text()).items()
                            if isinstance(v, int | float)})
    return metrics


def run_provenance(run: Path, followups: list[str]) -> dict[str, dict[str, Any] | None]:
    """The ``provenance`` of a finished run's ``metrics.json`` (key ``""``) and of its follow-ups' (their
    names); None where a file has none (written by an older vlkit)."""
    out: dict[str, dict[str, Any] | None] = {}
    for name, path in [("", run / "metrics.json"), *((f, run / f / "metrics.json") for f in followups)]:
        if path.is_file():
            out[name] = json.loads(path.read_text()).get("provenance")
    return out


def collect(out: Path) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, float]]]]:
    """``grid.json`` and the metrics of every finished run: variant → seed → metrics."""
    grid = json.loads((out / "grid.json").read_text())
    results: dict[str, dict[int, dict[str, float]]] = {}
    for variant, seeds in grid["runs"].items():
        for seed in seeds:
            metrics = run_metrics(out / "runs" / variant / f"seed{seed}", grid["followups"])
            if metrics is not None:
                results.setdefault(variant, {})[seed] = metrics
    return grid, results


def provenances(out: Path, grid: dict[str, Any],
                results: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any] | None]]:
    """``runs/<variant>/seed<k>`` → its provenance records (:func:`run_provenance`), finished runs only."""
    return {f"runs/{v}/seed{s}": run_provenance(out / "runs" / v / f"seed{s}", grid["followups"])
            for v, seeds in results.items() for s in seeds}


def _difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two :func:`vlkit.provenance.data_key` values, in words."""
    parts = []
    files_a, files_b = a.get("files", []), b.get("files", [])
    if len(files_a) != len(files_b):
        parts.append(f"{len(files_a)} vs {len(files_b)} files")
    for i, (fa, fb) in enumerate(zip(files_a, files_b, strict=False)):
        for key in sorted(fa.keys() | fb.keys()):
            if fa.get(key) != fb.get(key):
                parts.append(f"file {i + 1} {key} {str(fa.get(key))[:16]} vs {str(fb.get(key))[:16]}")
    counts_a, counts_b = a.get("counts", {}), b.get("counts", {})
    parts += [f"{k} {counts_a.get(k)} vs {counts_b.get(k)}" for k in sorted(counts_a.keys() | counts_b.keys())
              if counts_a.get(k) != counts_b.get(k)]
    return "; ".join(parts)


def check_same_data(records: dict[str, dict[str, dict[str, Any] | None]]) -> None:
    """Every run's evaluation (and each follow-up's) ran on the same data (content and sample counts).

    Raises:
        IncomparableRuns: naming the first two runs that differ and how.
    """
    parts = sorted({name for per_run in records.values() for name in per_run})
    for part in parts:
        first: tuple[str, dict[str, Any]] | None = None
        unknown = []
        for run, per_run in records.items():
            prov = per_run.get(part)
            if part not in per_run:
                continue
            key = data_key(prov.get("eval_data")) if prov else None
            if key is None:
                unknown.append(run)
                continue
            if first is None:
                first = (run, key)
            elif key != first[1]:
                what = f"{part} evaluation" if part else "evaluation"
                raise IncomparableRuns(
                    f"{first[0]} and {run} ran their {what} on different data ({_difference(first[1], key)}); "
                    "their metrics are not comparable and are not put in one table. Give every variant the same "
                    "evaluation data (data.source / eval.split / the task's files), or compare them in separate "
                    "ablations")
        if unknown:
            log.warning("%s: no record of the evaluation data (metrics.json written by an older vlkit); they are "
                        "tabled unchecked", ", ".join(unknown))


def columns(grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """The grid's ``metrics`` (and its follow-ups'), else every metric but the bookkeeping ones."""
    if grid.get("metrics"):
        return list(grid["metrics"])
    keys = {k for seeds in results.values() for m in seeds.values() for k in m}
    return sorted(k for k in keys if k.rsplit("/", 1)[-1] not in BOOKKEEPING)


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]], cols: list[str]) -> str:
    """Variants × metrics; mean ± std over seeds; the best mean per column in bold (higher is better)."""
    stats = {v: {c: summary([m[c] for m in seeds.values() if c in m]) for c in cols
                 if any(c in m for m in seeds.values())} for v, seeds in results.items()}
    best = {c: max((s[c][0] for s in stats.values() if c in s), default=math.nan) if not descriptive(c) else math.nan
            for c in cols}
    lines = [f"# {grid.get('description') or 'Ablation'}", "", f"`{grid['command']}`", "",
             "| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for variant in grid["runs"]:
        if variant not in stats:
            lines.append(f"| {variant} | 0 | " + " | ".join("—" for _ in cols) + " |")
            continue
        cells = []
        for c in cols:
            if c not in stats[variant]:
                cells.append("—")
                continue
            mean, std = stats[variant][c]
            text = f"{mean:,.0f}" if descriptive(c) else f"{mean:.2f}"
            text += f" ± {std:.2f}" if len(results[variant]) > 1 and not descriptive(c) else ""
            cells.append(f"**{text}**" if mean == best[c] else text)
        lines.append(f"| {variant} | {len(results[variant])} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over seeds; bold: the best mean of the column (higher is "
              "better; parameter counts describe the variant and are not marked). Plots: `bars_<metric>.png`, "
              "`curves_loss.png`, `curves_<metric>.png`."]
    return "\n".join(lines) + "\n"


def provenance_cells(prov: dict[str, Any] | None) -> dict[str, Any]:
    """The :data:`PROVENANCE_COLUMNS` of one provenance record (empty cells when there is none)."""
    if not prov:
        return {}
    code, libraries = prov.get("code", {}), prov.get("libraries", {})
    data = data_key(prov.get("eval_data"))
    return {"vlkit": code.get("vlkit"), "git_commit": code.get("git_commit"), "dirty": code.get("dirty"),
            "recipe_sha256": prov.get("recipe_sha256"),
            "eval_data_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
            if data is not None else None,
            "torch": libraries.get("torch"), "timm": libraries.get("timm"),
            "transformers": libraries.get("transformers"), "device": prov.get("device"),
            "world_size": prov.get("world_size"), "seed": prov.get("seed"), "step": prov.get("step")}


def write_csv(path: Path, results: dict[str, dict[int, dict[str, float]]],
              records: dict[str, dict[str, dict[str, Any] | None]] | None = None) -> None:
    """One row per run: its metrics, then what produced them (the run's provenance, then each
    follow-up's, prefixed ``<follow-up>/``)."""
    records = records or {}
    keys = sorted({k for seeds in results.values() for m in seeds.values() for k in m})
    parts = sorted({name for per_run in records.values() for name in per_run})
    prov_keys = [f"{part}/{c}" if part else c for part in parts for c in PROVENANCE_COLUMNS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seed", *keys, *prov_keys])
        for variant, seeds in results.items():
            for seed, metrics in sorted(seeds.items()):
                per_run = records.get(f"runs/{variant}/seed{seed}", {})
                cells = {f"{part}/{c}" if part else c: v for part in parts
                         for c, v in provenance_cells(per_run.get(part)).items()}
                writer.writerow([variant, seed, *(metrics.get(k, "") for k in keys),
                                 *("" if cells.get(k) is None else cells[k] for k in prov_keys)])


def produced_by(records: dict[str, dict[str, dict[str, Any] | None]]) -> str:
    """The table's provenance line: one record's summary when the runs agree on code and libraries, and
    the shared evaluation data; else a pointer to ``results.csv``."""
    mains = [per_run.get("") for per_run in records.values() if per_run.get("")]
    if not mains:
        return ""
    shared = {json.dumps({k: p.get(k) for k in ("code", "libraries", "device")}, sort_keys=True) for p in mains
              if p is not None}
    first = mains[0]
    assert first is not None
    cells = provenance_cells(first)
    if len(shared) == 1:
        per_run = {"recipe_sha256": "per run", "seed": "per run", "step": "per run"}
        line = f"Produced by: {provenance_summary({**first, **per_run})}"
    else:
        line = "Produced by several code versions, libraries or devices"
    return (f"\n{line}; evaluation data sha256 {str(cells.get('eval_data_sha256'))[:12]} for every run "
            "(checked). Per run: `results.csv`.\n")


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a TensorBoard scalar of ``run`` (empty when absent)."""
    return run_scalars(run, tag).get(tag, [])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def plots(out: Path, grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]], cols: list[str]) -> None:
    """Bar charts per metric and overlaid curves (loss; evaluation metrics logged at several steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in grid["runs"] if v in results]
    for c in cols:
        stats = [summary([m[c] for m in results[v].values() if c in m]) if any(c in m for m in results[v].values())
                 else (math.nan, 0.0) for v in variants]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(variants)), 3.5))
        ax.bar(range(len(variants)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
        ax.set_ylabel(c)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"bars_{_safe(c)}.png", dpi=120)
        plt.close(fig)
    tags = [("loss/total", "curves_loss.png")] + [(f"eval/{c}", f"curves_{_safe(c)}.png") for c in cols
                                                   if "/" not in c]
    for tag, name in tags:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = 0
        for variant in variants:
            by_step: dict[int, list[float]] = {}
            for seed in results[variant]:
                for step, value in scalars(out / "runs" / variant / f"seed{seed}", tag):
                    by_step.setdefault(step, []).append(value)
            if len(by_step) < 2:
                continue
            steps = sorted(by_step)
            ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], label=variant)
            drawn += 1
        if drawn:
            ax.set_xlabel("step")
            ax.set_ylabel(tag + " (mean over seeds)")
            ax.grid(True, alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / name, dpi=120)
        plt.close(fig)


def write_report(out: Path) -> str:
    """Draw ``results.md``, ``results.csv`` and the plots from the finished runs; returns the table."""
    grid, results = collect(out)
    records = provenances(out, grid, results)
    check_same_data(records)
    cols = columns(grid, results)
    table = markdown(grid, results, cols) + produced_by(records)
    (out / "results.md").write_text(table)
    write_csv(out / "results.csv", results, records)
    if results:
        plots(out, grid, results, cols)
    missing = [f"{v}/seed{s}" for v, seeds in grid["runs"].items() for s in seeds if s not in results.get(v, {})]
    if missing:
        log.warning("not finished yet (left out of the report): %s", ", ".join(missing))
    return table
