"""Statistics of an ablation's runs: mean ± std over seeds, the rule that marks a best mean, chance levels,
and how a cell is written."""

from __future__ import annotations

import math
import statistics

from vlkit.train.run_report import chance_level


def descriptive(column: str) -> bool:
    """A column that describes a variant rather than scores it (``encoder_parameters``): shown as an
    integer, never marked best."""
    return column.endswith("parameters")


def summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


Stats = dict[str, dict[str, tuple[float, float, int]]]
"""variant → column → (mean, sample std, seeds)."""


def stats_of(results: dict[str, dict[int, dict[str, float]]], cols: list[str]) -> Stats:
    return {v: {c: (*summary(vals), len(vals)) for c in cols if (vals := [m[c] for m in seeds.values() if c in m])}
            for v, seeds in results.items()}


BOLD_RULE = ("bold: the best mean of a column, only when every variant ran at least 2 seeds and the best mean "
             "minus its standard deviation lies above the runner-up's mean plus its standard deviation (their "
             "±1 std ranges do not overlap); higher is better; parameter counts describe the variant and are "
             "never marked")


def best_of(stats: Stats, column: str) -> tuple[str | None, str]:
    """The variant whose mean of ``column`` is marked best, or None and why not (:data:`BOLD_RULE`)."""
    ranked = sorted(((s[column], v) for v, s in stats.items() if column in s), key=lambda x: -x[0][0])
    if len(ranked) < 2:
        return None, "one variant only"
    single = [v for (_, _, n), v in ranked if n < 2]
    if len(single) == len(ranked):
        return None, "one seed per variant: no seed spread to tell a difference from noise"
    if single:
        return None, f"{', '.join(single)} ran one seed: no spread to compare with"
    (mean, std, _), winner = ranked[0]
    (second, second_std, _), runner_up = ranked[1]
    if mean - std <= second + second_std:
        return None, (f"{winner} ({cell(mean, std, True)}) and {runner_up} ({cell(second, second_std, True)}) "
                      "are within the seeds' spread")
    return winner, ""


def decimals(value: float) -> int:
    """Two decimals, more for values below 1 (three significant digits: ``0.518``)."""
    if value == 0 or abs(value) >= 1 or not math.isfinite(value):
        return 2
    return max(2, 2 - math.floor(math.log10(abs(value))))


def cell(mean: float, std: float, spread: bool, whole: bool = False) -> str:
    if whole:
        return f"{mean:,.0f}"
    d = decimals(mean)
    return f"{mean:,.{d}f}" + (f" ± {std:,.{d}f}" if spread else "")


def chance_of(results: dict[str, dict[int, dict[str, float]]], column: str) -> list[float]:
    """The distinct chance levels of ``column`` over the runs (empty: none known)."""
    levels = {round(level[0], 9) for seeds in results.values() for m in seeds.values()
              if column in m and (level := chance_level(column, m)) is not None}
    return sorted(levels)
