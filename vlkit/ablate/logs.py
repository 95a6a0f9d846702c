"""The TensorBoard logs of an ablation's runs: their scalars, read once, and each run's timing."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlkit.train.run_report import RunTiming, Scalar, logged_scalars, run_timing, sessions


@dataclass
class Timings:
    """Each finished run's :class:`RunTiming` (None where its log has no timing)."""

    runs: dict[str, dict[int, RunTiming | None]] = field(default_factory=dict)
    followups: dict[str, dict[str, dict[int, RunTiming | None]]] = field(default_factory=dict)

    def mean(self, variant: str, what: str) -> float | None:
        values = [v for t in self.runs.get(variant, {}).values() if t is not None
                  and (v := {"train_s": t.train_s, "wall_s": t.wall_s, "samples_per_s": t.samples_per_s}[what])
                  is not None]
        return statistics.fmean(values) if values else None


Logs = dict[str, dict[int, dict[str, list[Scalar]]]]
"""variant → seed → the run's TensorBoard scalars."""


def read_logs(out: Path, results: dict[str, dict[int, dict[str, float]]], sub: str = "") -> Logs:
    """Every finished run's scalars (``sub``: a follow-up's folder inside the run), each log read once."""
    return {v: {s: logged_scalars(out / "runs" / v / f"seed{s}" / sub) for s in seeds} for v, seeds in results.items()}


def timings_of(out: Path, grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]],
               logs: Logs) -> Timings:
    """Each finished run's timing (and each follow-up's) from its TensorBoard log."""
    def one(folder: Path, logged: dict[str, list[Scalar]]) -> RunTiming | None:
        return run_timing(logged, sessions(folder))

    runs = {v: {s: one(out / "runs" / v / f"seed{s}", logs[v][s]) for s in seeds} for v, seeds in results.items()}
    followups = {}
    for name in grid.get("followups", []):
        sub = read_logs(out, results, name)
        followups[name] = {v: {s: one(out / "runs" / v / f"seed{s}" / name, sub[v][s]) for s in seeds}
                           for v, seeds in results.items()}
    return Timings(runs, followups)
