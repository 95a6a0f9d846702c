"""The comparison an ablation hands back, drawn from the finished runs under ``DIR/runs`` and
``DIR/grid.json``:

- ``results.md``: variants × metrics, mean ± std over seeds, a ``chance`` row (the runs' chance
  levels, :func:`vlkit.train.run_report.chance_level`), each variant's training time and samples/s,
  and the best mean of a column in bold only where it stands out of the seeds' spread
  (:func:`best_of`; a footnote says why a column has no bold);
- ``results.csv``: one row per run: its metrics, its timing (``train_s``, ``wall_s``, ``samples_per_s``;
  the follow-ups' prefixed with their name), then what produced it;
- ``bars_<metric>.png``: mean ± std per variant with value labels and the chance level drawn;
- ``curves_loss_<objective>.png``: the training loss of each objective every variant trains (objective
  losses are logged unweighted, so they compare across variants); ``curves_loss.png`` (the weighted
  total) only when every variant trains the same objectives with the same weights: a total over
  different objectives is a sum of different terms;
- ``curves_<metric>.png``: evaluation metrics logged at several steps (``train.eval_every``); when the
  runs evaluated only at the end, ``results.md`` says so instead.

The statistics and the bold rule are :mod:`vlkit.ablate.stats`, the runs' logs and timings
:mod:`vlkit.ablate.logs`, the plots :mod:`vlkit.ablate.plots`. ``results.md`` lists the plots it wrote;
``bars_*.png`` / ``curves_*.png`` that an earlier report wrote and this one does not (a variant that
finished since changed what holds) are removed.

Every row of ``results.csv`` carries what produced it (the run's ``provenance``: vlkit version and
commit, recipe hash, evaluation-data fingerprint, libraries, device, world size, seed, step), and runs
evaluated on different data are never put in one table (:class:`IncomparableRuns`, naming the runs and
the difference)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from vlkit.ablate.logs import Timings, read_logs, timings_of
from vlkit.ablate.plots import plots
from vlkit.ablate.stats import BOLD_RULE, best_of, cell, chance_of, descriptive, stats_of
from vlkit.core.errors import UserError
from vlkit.provenance import data_key
from vlkit.provenance import summary as provenance_summary
from vlkit.train.run_report import BOOKKEEPING as RUN_BOOKKEEPING
from vlkit.train.run_report import RunTiming, number

log = logging.getLogger("vlkit.ablate")

BOOKKEEPING = (set(RUN_BOOKKEEPING) - {"encoder_parameters"}) | {"step"}
"""Metric keys left out of the default columns: counts, chance levels and bookkeeping (parameter counts stay:
they describe a variant)."""
PROVENANCE_COLUMNS = ("vlkit", "git_commit", "dirty", "recipe_sha256", "eval_data_sha256", "torch", "timm",
                      "transformers", "device", "world_size", "seed", "step")
"""What ``results.csv`` records of each run's (and follow-up's) provenance."""
TIMING_COLUMNS = ("train_s", "wall_s", "samples_per_s")
"""What ``results.csv`` records of each run's (and follow-up's) timing (:class:`RunTiming`)."""


class IncomparableRuns(UserError):
    """Runs of one table were evaluated on different data."""


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


def markdown(grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]], cols: list[str],
             timings: Timings | None = None, plots_written: list[str] | None = None,
             notes: list[str] | None = None) -> str:
    """Variants × metrics (mean ± std over seeds), the chance row, each variant's training time and
    samples/s (when ``timings`` are given), the bold rule and why a column has no bold, and the plots."""
    stats = stats_of(results, cols)
    best = {c: best_of(stats, c) if not descriptive(c) else (None, "") for c in cols}
    timed = timings is not None and any(t is not None for runs in timings.runs.values() for t in runs.values())
    extra = ["train time (s)", "samples/s"] if timed else []
    lines = [f"# {grid.get('description') or 'Ablation'}", "", f"`{grid['command']}`", "",
             "| variant | seeds | " + " | ".join([*cols, *extra]) + " |",
             "|---|---|" + "---|" * (len(cols) + len(extra))]
    for variant in grid["runs"]:
        if variant not in stats:
            lines.append(f"| {variant} | 0 | " + " | ".join("—" for _ in [*cols, *extra]) + " |")
            continue
        cells = []
        for c in cols:
            if c not in stats[variant]:
                cells.append("—")
                continue
            mean, std, _ = stats[variant][c]
            text = cell(mean, std, len(results[variant]) > 1 and not descriptive(c), whole=descriptive(c))
            cells.append(f"**{text}**" if best[c][0] == variant else text)
        if timed and timings is not None:
            train_s, rate = timings.mean(variant, "train_s"), timings.mean(variant, "samples_per_s")
            cells += ["—" if train_s is None else number(train_s, 3), "—" if rate is None else number(rate, 3)]
        lines.append(f"| {variant} | {len(results[variant])} | " + " | ".join(cells) + " |")
    chance = [chance_of(results, c) for c in cols]
    if any(chance):
        lines.append("| *chance* | | " + " | ".join(" / ".join(number(x) for x in levels) if levels else ""
                                                      for levels in chance) + " |" + " |" * len(extra))
    lines += ["", f"Mean ± sample standard deviation over seeds; {BOLD_RULE}."]
    unmarked = [f"`{c}`: {why}" for c in cols if (why := best[c][1])]
    if unmarked:
        reasons = {why for c in cols if (why := best[c][1])}
        lines.append("No bold in " + ("every column: " + next(iter(reasons)) if len(reasons) == 1
                                       and len(unmarked) == sum(not descriptive(c) for c in cols)
                                       else "; ".join(unmarked)) + ".")
    if any(chance):
        lines.append("*chance*: the runs' chance level of each metric (retrieval R@1: 100 / N images; swap probe: "
                     "0.5; classification: 1/C or the majority class; VQA: always the most frequent answer).")
    if timed:
        lines.append("Train time: the trainer's clock over the training steps, mean over seeds; samples/s: samples "
                     "trained on / train time (per run, with wall time: `results.csv`).")
    if plots_written is not None:
        lines.append("Plots: " + (", ".join(f"`{p}`" for p in plots_written) or "none") + ".")
    lines += notes or []
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


def timing_cells(timing: RunTiming | None) -> dict[str, float]:
    """The :data:`TIMING_COLUMNS` of one run (empty when its log has no timing)."""
    if timing is None:
        return {}
    cells = {"train_s": timing.train_s, "samples_per_s": timing.samples_per_s}
    return cells | ({"wall_s": timing.wall_s} if timing.wall_s is not None else {})


def write_csv(path: Path, results: dict[str, dict[int, dict[str, float]]],
              records: dict[str, dict[str, dict[str, Any] | None]] | None = None,
              timings: Timings | None = None) -> None:
    """One row per run: its metrics, its timing (``train_s``, ``wall_s``, ``samples_per_s``; each
    follow-up's prefixed ``<follow-up>/``), then what produced them (the run's provenance, then each
    follow-up's, prefixed ``<follow-up>/``)."""
    records = records or {}
    timings = timings or Timings()
    timed = set(TIMING_COLUMNS)  # a run's own wall_s (metrics.json) goes in the timing columns, not twice
    keys = sorted({k for seeds in results.values() for m in seeds.values() for k in m
                   if k.rsplit("/", 1)[-1] not in timed})
    parts = sorted({name for per_run in records.values() for name in per_run})
    prov_keys = [f"{part}/{c}" if part else c for part in parts for c in PROVENANCE_COLUMNS]
    time_keys = [*TIMING_COLUMNS, *(f"{f}/{c}" for f in sorted(timings.followups) for c in TIMING_COLUMNS)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seed", *keys, *time_keys, *prov_keys])
        for variant, seeds in results.items():
            for seed, metrics in sorted(seeds.items()):
                per_run = records.get(f"runs/{variant}/seed{seed}", {})
                cells = {f"{part}/{c}" if part else c: v for part in parts
                         for c, v in provenance_cells(per_run.get(part)).items()}
                cells |= timing_cells(timings.runs.get(variant, {}).get(seed))
                for name, per_variant in timings.followups.items():
                    cells |= {f"{name}/{k}": v for k, v in timing_cells(per_variant.get(variant, {}).get(seed)).items()}
                # recorded by the run itself (the whole command, not the span of its TensorBoard log)
                cells |= {k: v for k, v in metrics.items() if k.rsplit("/", 1)[-1] in timed}
                writer.writerow([variant, seed, *(metrics.get(k, "") for k in keys),
                                 *("" if cells.get(k) is None else cells[k] for k in [*time_keys, *prov_keys])])


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


def write_report(out: Path) -> str:
    """Draw ``results.md``, ``results.csv`` and the plots from the finished runs; returns the table."""
    grid, results = collect(out)
    records = provenances(out, grid, results)
    check_same_data(records)
    cols = columns(grid, results)
    logs = read_logs(out, results)
    timings = timings_of(out, grid, results, logs)
    written, notes = plots(out, grid, results, cols, logs) if results else ([], [])
    for stale in [*out.glob("bars_*.png"), *out.glob("curves_*.png")]:  # an earlier report's, no longer true
        if stale.name not in written:
            stale.unlink()
    table = markdown(grid, results, cols, timings, written, notes) + produced_by(records)
    (out / "results.md").write_text(table)
    write_csv(out / "results.csv", results, records, timings)
    missing = [f"{v}/seed{s}" for v, seeds in grid["runs"].items() for s in seeds if s not in results.get(v, {})]
    if missing:
        log.warning("not finished yet (left out of the report): %s", ", ".join(missing))
    return table
