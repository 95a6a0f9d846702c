"""The plots of an ablation: a bar chart per metric (value labels, the chance level) and overlaid curves
(each shared objective's loss; the total loss only when every variant sums the same objectives; evaluation
metrics logged at several steps)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from vlkit.ablate.logs import Logs, read_logs
from vlkit.ablate.stats import cell, chance_of, descriptive, stats_of
from vlkit.train.run_report import Scalar, number, read_run_recipe


def safe_name(name: str) -> str:
    """``name`` as a file-name part: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _objective(name: str, cfg: dict[str, Any]) -> str:
    """``itm × 1``, ``itc_global (itc) × 0.5, warm-up 100``: what an objective adds to the total loss."""
    kind = f" ({cfg['type']})" if cfg.get("type") not in (None, name) else ""
    warmup = f", warm-up {cfg['warmup_steps']}" if cfg.get("warmup_steps") else ""
    return f"{name}{kind} × {number(cfg.get('weight', 1.0))}{warmup}"


def objective_signature(out: Path, variant: str, seeds: dict[int, dict[str, list[Scalar]]]) -> tuple[str, ...]:
    """What a variant's total loss sums: its objectives with their type, weight and warm-up (from the runs'
    ``recipe.yaml``), else the objective losses it logged."""
    for seed in seeds:
        recipe = read_run_recipe(out / "runs" / variant / f"seed{seed}")
        if isinstance(recipe.get("objectives"), dict):
            return tuple(sorted(_objective(name, cfg or {}) for name, cfg in recipe["objectives"].items()))
    return tuple(sorted({t.removeprefix("loss/") for logged in seeds.values() for t in logged
                         if t.startswith("loss/") and t != "loss/total"}))


def _curve(ax: Any, logs: dict[int, dict[str, list[Scalar]]], tag: str, label: str) -> bool:
    """The mean over seeds of ``tag`` per step; False when the variant logged it at fewer than 2 steps."""
    by_step: dict[int, list[float]] = {}
    for logged in logs.values():
        for point in logged.get(tag, []):
            by_step.setdefault(point.step, []).append(point.value)
    if len(by_step) < 2:
        return False
    steps = sorted(by_step)
    ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], label=label,
            marker="o" if len(steps) <= 20 else None, markersize=3)
    return True


def plots(out: Path, grid: dict[str, Any], results: dict[str, dict[int, dict[str, float]]], cols: list[str],
          logs: Logs | None = None) -> tuple[list[str], list[str]]:
    """Bar charts per metric (value labels, chance level) and overlaid curves: each shared objective's
    loss, the total loss when every variant sums the same objectives, evaluation metrics logged at several
    steps. Returns the files written and notes on the plots that were not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    logs = logs if logs is not None else read_logs(out, results)
    variants = [v for v in grid["runs"] if v in results]
    stats = stats_of(results, cols)
    written: list[str] = []
    notes: list[str] = []
    for c in cols:
        present = [v for v in variants if c in stats.get(v, {})]
        if not present:
            continue
        means = [stats[v][c][0] for v in present]
        stds = [stats[v][c][1] for v in present]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(present)), 3.8))
        bars = ax.bar(range(len(present)), means, yerr=stds, capsize=4, color="#4c72b0")
        labels = [cell(m, s, stats[v][c][2] > 1 and not descriptive(c), whole=descriptive(c))
                  for v, m, s in zip(present, means, stds, strict=True)]
        for bar, mean, std, label in zip(bars, means, stds, labels, strict=True):  # above the error bar
            top = mean + std if mean >= 0 else mean - std
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 3 if mean >= 0 else -3),
                        textcoords="offset points", ha="center", va="bottom" if mean >= 0 else "top", fontsize=8)
        levels = chance_of({v: results[v] for v in present}, c)
        if len(levels) == 1:
            ax.axhline(levels[0], color="#c44e52", linestyle="--", linewidth=1.2, label=f"chance {number(levels[0])}")
            ax.legend(fontsize=8, loc="lower right")
        elif levels:  # per variant (its runs' level)
            label = "chance (per variant)"
            for i, v in enumerate(present):
                own = chance_of({v: results[v]}, c)
                if own:
                    ax.hlines(own[0], i - 0.4, i + 0.4, color="#c44e52", linestyle="--", linewidth=1.2, label=label)
                    label = "_nolegend_"
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(present)), present, rotation=20, ha="right")
        ax.set_ylabel(c)
        ax.margins(y=0.15)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        name = f"bars_{safe_name(c)}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(name)

    signatures = {v: objective_signature(out, v, logs.get(v, {})) for v in variants}
    losses = {v: {t for logged in logs.get(v, {}).values() for t in logged if t.startswith("loss/")} for v in variants}
    shared = set.intersection(*losses.values()) if losses else set()
    same_objectives = len(set(signatures.values())) == 1
    tags = [(f"loss/{t.removeprefix('loss/')}", f"curves_loss_{safe_name(t.removeprefix('loss/'))}.png",
             f"{t} (unweighted)") for t in sorted(shared - {"loss/total"})]
    if same_objectives and "loss/total" in shared:
        tags.insert(0, ("loss/total", "curves_loss.png", "loss/total"))
    elif len(variants) > 1:
        notes.append("No `curves_loss.png`: the variants' total losses sum different objectives ("
                     + "; ".join(f"{v}: {', '.join(s) or 'none'}" for v, s in signatures.items())
                     + "), so their levels do not compare; the per-objective curves do.")
    eval_tags = [(f"eval/{c}", f"curves_{safe_name(c)}.png", f"eval/{c}") for c in cols
                 if "/" not in c and not descriptive(c)]
    missing_eval = []
    for tag, name, label in tags + eval_tags:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = sum(_curve(ax, logs.get(v, {}), tag, v) for v in variants)
        if drawn:
            if tag.startswith("eval/") and len(levels := chance_of(results, tag.removeprefix("eval/"))) == 1:
                ax.axhline(levels[0], color="#c44e52", linestyle="--", linewidth=1, label=f"chance {number(levels[0])}")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label + " (mean over seeds)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / name, dpi=120)
            written.append(name)
        elif tag.startswith("eval/"):
            missing_eval.append(tag.removeprefix("eval/"))
        plt.close(fig)
    if missing_eval:
        notes.append(f"No evaluation curves for {', '.join(f'`{c}`' for c in missing_eval)}: the runs evaluated them "
                     "at one step only (the end); set `train.eval_every` in the grid's overrides to draw them.")
    return written, notes
