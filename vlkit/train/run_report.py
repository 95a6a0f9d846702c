"""``DIR/report.md`` and ``DIR/curves.png`` of a finished run, for a researcher to read at a glance.

``report.md`` holds, in order:

- the recipe: its name, the encoder (type, size, parameters), the objectives with their weights, steps,
  batch, learning rate and schedule, seed (read from the run's own ``recipe.yaml``);
- the run: steps, samples, training time, wall time and throughput (samples/s), read from the
  trainer's TensorBoard log (:func:`run_timing`: the ``time/data_s`` + ``time/compute_s`` of every
  logged window, and the events' wall-clock stamps);
- the final losses (each ``loss/*`` scalar at the last logged step: the mean over that logging window);
- the metrics, each with its chance level where one is known (:func:`chance_level`: retrieval R@1
  = 100 / N images, the swap probe 0.5, classification 1/C or the majority class, VQA the
  most-frequent-answer baseline, grounding a random candidate), the headline ones first;
- the curves (``curves.png``, always written: a short run shows its points as markers, and an
  evaluation that ran only at the end is said so in the figure rather than left as an empty panel);
- what produced the figures (:mod:`vlkit.provenance`).

Numbers are written for people (:func:`number`): thousands separators, four significant digits, never
scientific notation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vlkit.core.errors import RecipeError
from vlkit.recipe_yaml import load_file

log = logging.getLogger("vlkit.train")

HEADLINE = ("r_mean", "txt_r1", "img_r1", "itc_r_mean", "swap_acc", "acc", "vqa_acc", "box_acc", "top1")
BOOKKEEPING = ("steps", "samples", "images_skipped", "annotations_skipped", "bad_samples", "encoder_parameters",
               "n", "n_images", "n_texts", "n_swaps", "n_skipped", "n_skipped_annotations", "n_classes", "n_answers",
               "box_n", "chance_r1", "chance_acc", "chance_top1", "majority_acc", "most_frequent_acc",
               "box_chance_acc", "wall_s")
"""Metric keys that count, or that are the chance levels of other metrics: shown beside them, not as scores."""
EVAL_CURVES = 4
"""At most this many evaluation metrics (headline ones first) get a panel in ``curves.png``."""
MARKERS_UP_TO = 20
"""Series with at most this many points are drawn with markers (a short run's points stay visible)."""


# --------------------------------------------------------------------------- numbers for people
def number(value: float | int, digits: int = 4) -> str:
    """``value`` for a reader: integers with thousands separators (``439,872``), other values to
    ``digits`` significant digits without trailing zeros (``41.67``, ``0.5625``, ``0.00001``), never in
    scientific notation; ``nan`` / ``inf`` as such."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if v.is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    if abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    decimals = min(15, digits - 1 - math.floor(math.log10(abs(v))))
    text = f"{v:,.{decimals}f}"
    # exact (to float32, as TensorBoard stores scalars): drop the zeros; rounded: they say how precise it is
    if "." in text and abs(float(text.replace(",", "")) - v) <= 1e-6 * abs(v):
        text = text.rstrip("0").rstrip(".")
    return text


def duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{number(seconds, 3)} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,} h {minutes:02d} min"


def _prefix(metric: str) -> tuple[str, str]:
    """``vqa/vqa_acc`` → (``vqa/``, ``vqa_acc``): a follow-up's metrics carry its name."""
    head, _, name = metric.rpartition("/")
    return (head + "/" if head else ""), name


def chance_level(metric: str, metrics: Mapping[str, Any]) -> tuple[float, str] | None:
    """The chance (or trivial-baseline) level of ``metric`` in ``metrics``, with what it is, or None
    when none is known. Retrieval R@1 (both directions, ITM or ITC scores): ``chance_r1`` = 100 / N
    images (a random ranking finds the one right image among N, or one of an image's captions, which
    are 1/N of the texts); the swap probe: 0.5 (true or swapped caption); classification: ``chance_acc``
    (1/C) or ``majority_acc`` (always the most frequent class); zero-shot: ``chance_top1`` (1/C); VQA:
    ``most_frequent_acc`` (always the most frequent answer); grounding: ``box_chance_acc`` (a random
    candidate box). Same units as the metric."""
    prefix, name = _prefix(metric)

    def known(key: str) -> float | None:
        value = metrics.get(prefix + key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    if name in ("txt_r1", "img_r1", "itc_txt_r1", "itc_img_r1") and (c := known("chance_r1")) is not None:
        images = known("n_images")
        return c, f"100/N, N = {number(images)} images" if images else "100/N images"
    if name.startswith("swap_acc"):
        return 0.5, "true or swapped caption"
    if name == "acc" and (c := known("chance_acc")) is not None:
        return c, "1/C classes"
    if name == "acc" and (c := known("majority_acc")) is not None:
        return c, "majority class"
    if name in ("top1", "mean_class_acc") and (c := known("chance_top1")) is not None:
        return c, "1/C classes"
    if name == "vqa_acc" and (c := known("most_frequent_acc")) is not None:
        return c, "most frequent answer"
    if name == "box_acc" and (c := known("box_chance_acc")) is not None:
        return c, "random candidate box"
    return None


def is_score(metric: str) -> bool:
    """A metric that scores the model (not a count, a chance level or bookkeeping)."""
    return _prefix(metric)[1] not in BOOKKEEPING


# --------------------------------------------------------------------------- the TensorBoard log
class Scalar(NamedTuple):
    """One logged value: its step, value and the wall-clock time it was written."""

    step: int
    value: float
    wall_time: float


def logged_scalars(run: Path) -> dict[str, list[Scalar]]:
    """Every scalar of ``run/tb`` with its wall-clock time; empty when there is no log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its reader logs each file it reaches the end of
    folder = run / "tb"
    if not folder.is_dir():
        return {}
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {t: [Scalar(e.step, e.value, e.wall_time) for e in events.Scalars(t)]
            for t in events.Tags().get("scalars", [])}


def scalars(run: Path, tag: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """``tag`` → ``[(step, value)]`` from ``run/tb`` (every scalar, or just ``tag``); empty when absent."""
    return {t: [(s.step, s.value) for s in points] for t, points in logged_scalars(run).items()
            if tag is None or t == tag}


@dataclass(frozen=True)
class RunTiming:
    """How long a run trained and how fast, from its TensorBoard log.

    Attributes:
        train_s: the training loop: the sum over logged windows of ``time/data_s`` + ``time/compute_s``
            (the trainer's wall clock from the first step to the last logged one, intermediate
            checkpoints and evaluations included).
        data_s: of which waiting for the data loader.
        samples: samples trained on in those windows (``samples_per_s`` × window time).
        samples_per_s: ``samples / train_s``.
        wall_s: from the start of the first step to the last logged scalar (the final evaluation's):
            None when the log holds several sessions (a resumed run: the span would include the pause).
        sessions: TensorBoard event files in ``tb/`` (one per session).
    """

    train_s: float
    data_s: float
    samples: float
    samples_per_s: float
    wall_s: float | None
    sessions: int


def run_timing(logged: Mapping[str, list[Scalar]], sessions: int = 1) -> RunTiming | None:
    """:class:`RunTiming` from :func:`logged_scalars`; None when the log has no timing scalars."""
    data = {s.step: s for s in logged.get("time/data_s", [])}
    compute = {s.step: s for s in logged.get("time/compute_s", [])}
    rate = {s.step: s.value for s in logged.get("samples_per_s", [])}
    steps = sorted(data.keys() & compute.keys())
    if not steps:
        return None
    windows = {step: data[step].value + compute[step].value for step in steps}
    train_s = sum(windows.values())
    samples = sum(rate.get(step, 0.0) * seconds for step, seconds in windows.items())
    wall_s = None
    if sessions == 1:
        first = steps[0]
        start = min(data[first].wall_time, compute[first].wall_time) - windows[first]
        end = max(s.wall_time for points in logged.values() for s in points)
        wall_s = max(end - start, train_s)
    return RunTiming(train_s=train_s, data_s=sum(data[s].value for s in steps), samples=samples,
                     samples_per_s=samples / train_s if train_s > 0 else math.nan, wall_s=wall_s,
                     sessions=sessions)


def sessions(run: Path) -> int:
    """How many training sessions wrote to ``run``'s TensorBoard log (a resumed run: more than one)."""
    folder = run / "tb"
    return sum(1 for p in folder.iterdir() if p.name.startswith("events.out.tfevents")) if folder.is_dir() else 0


# --------------------------------------------------------------------------- the recipe
def recipe_name(description: str) -> str | None:
    """The shipped recipe whose own ``description`` is ``description`` (None: none, or several)."""
    from vlkit.recipe import list_recipes

    if not description.strip():
        return None
    names = [name for name, text in list_recipes() if text == description.strip()]
    return names[0] if len(names) == 1 else None


def settings_rows(recipe: Mapping[str, Any], name: str | None, name_given: bool,
                  metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) rows of the report's recipe table, from the resolved recipe's mapping."""
    rows: list[tuple[str, str]] = []
    if name is not None:
        rows.append(("recipe", f"`{name}`" if name_given else
                     f"`{name}` (the shipped recipe with this description; the values below are the run's own)"))
    else:
        rows.append(("recipe", "name not recorded (a recipe file of your own, or one whose description was changed)"))
    encoder = recipe.get("encoder") or {}
    enc = f"{encoder.get('type', '?')}, size {encoder.get('size', '?')}"
    if isinstance(metrics.get("encoder_parameters"), int | float):
        enc += f" ({number(metrics['encoder_parameters'])} parameters)"
    rows.append(("encoder", enc))
    objectives = recipe.get("objectives") or {}
    if objectives:
        parts = []
        for key, cfg in objectives.items():
            cfg = cfg or {}
            kind = f" ({cfg['type']})" if cfg.get("type") not in (None, key) else ""
            parts.append(f"{key}{kind} × {number(cfg.get('weight', 1.0))}")
        rows.append(("objectives (weight)", ", ".join(parts)))
    if recipe.get("task"):
        rows.append(("task", str((recipe["task"] or {}).get("type"))))
    train = recipe.get("train") or {}
    steps = f"{number(train['steps'])}" if "steps" in train else "?"
    if train.get("max_steps"):
        steps += f" (stopping at train.max_steps {number(train['max_steps'])})"
    rows.append(("steps", steps))
    batch = number(train["batch_size"]) if "batch_size" in train else "?"
    if (train.get("grad_accum") or 1) > 1:
        batch += f" (grad_accum {train['grad_accum']})"
    rows.append(("batch (global)", batch))
    if "lr" in train:
        rows.append(("lr", f"{number(train['lr'])} ({train.get('schedule', '?')}, warm-up "
                           f"{number(train.get('warmup_steps', 0))} steps, min {number(train.get('min_lr', 0))})"))
    rows.append(("seed", str(recipe.get("seed", "?"))))
    if recipe.get("init_from"):
        rows.append(("init_from", f"`{recipe['init_from']}`"))
    data = recipe.get("data") or {}
    source = (data.get("source") or {}).get("type")
    if source:
        rows.append(("data", f"{source}, train split `{data.get('train_split')}`"))
    return rows


# --------------------------------------------------------------------------- the figure
def eval_note(eval_points: Mapping[str, list[Scalar]], train: Mapping[str, Any], last_step: int | None) -> str | None:
    """Why ``curves.png`` has no evaluation curve, or None when it has one."""
    if any(len(points) >= 2 for points in eval_points.values()):
        return None
    every = int(train.get("eval_every") or 0)
    if not eval_points:
        return "No evaluation was logged: no evaluation curve."
    at = f" (step {number(last_step)})" if last_step is not None else ""
    if every == 0:
        return (f"Evaluation ran once, at the end{at}: set train.eval_every to draw evaluation curves. "
                "The final values are in report.md.")
    return (f"train.eval_every = {every} is not below the run's steps: evaluation ran once, at the end{at}. "
            "The final values are in report.md.")


def plot_curves(series: Mapping[str, list[Scalar]], chance: Mapping[str, float], note: str | None,
                path: Path) -> None:
    """One panel per series (markers when it has few points; a dashed chance line where known), and a
    text panel for ``note``; a figure with only the note when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = len(series) + (1 if note else 0) or 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (tag, points) in zip(flat, series.items(), strict=False):
        marker = "o" if len(points) <= MARKERS_UP_TO else None
        ax.plot([p.step for p in points], [p.value for p in points], marker=marker, markersize=4)
        if tag in chance:
            ax.axhline(chance[tag], color="0.4", linestyle="--", linewidth=1, label=f"chance {number(chance[tag])}")
            ax.legend(fontsize=7)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len({p.step for p in points}) == 1:  # one logged step: an integer axis around it
            ax.set_xlim(points[0].step - 1, points[0].step + 1)
        ax.grid(True, alpha=0.3)
    for ax in flat[len(series):]:
        ax.axis("off")
    if note or not series:
        import textwrap

        ax = flat[len(series)]
        ax.set_title("evaluation" if note else "curves", fontsize=9)
        ax.text(0.5, 0.5, textwrap.fill(note or "Nothing was logged to draw (no tb/ scalars).", 36),
                ha="center", va="center", fontsize=9, transform=ax.transAxes,
                bbox={"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "0.7"})
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the report
def provenance_lines(record: dict[str, Any]) -> list[str]:
    """The report's "Produced by" section: code, recipe hash, libraries, device, and the evaluation data."""
    from vlkit.provenance import summary

    lines = ["", "## Produced by", "", summary(record) + "."]
    data = record.get("eval_data")
    if data:
        files = "; ".join(f"`{f['path']}` ({number(f['bytes']) if 'bytes' in f else '?'} bytes"
                          + (f", sha256 {f['sha256'][:12]}" if "sha256" in f else "")
                          + (f", {number(f['files'])} files" if "files" in f else "") + ")"
                          for f in data.get("files", []))
        counts = ", ".join(f"{k} {number(v)}" for k, v in data.get("counts", {}).items())
        lines.append(f"Evaluated on split `{data.get('split')}`: {files or 'no files'}" + (f"; {counts}" if counts
                                                                                          else "") + ".")
    lines.append("Full record: `provenance` in metrics.json.")
    return lines


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def read_run_recipe(run: Path) -> dict[str, Any]:
    """``run/recipe.yaml`` as a mapping, read within the recipe bounds; ``{}`` when it is absent or
    unreadable (a warning says which)."""
    path = run / "recipe.yaml"
    if not path.is_file():
        return {}
    try:
        loaded, _ = load_file(path)
    except RecipeError as err:
        log.warning("cannot read %s (%s); reported without it", path, err)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def metric_rows(numbers: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """The metrics table (headline metrics in bold, first) and the names of those at or below chance."""
    scores = [k for k in numbers if is_score(k)]
    first = [k for k in HEADLINE if k in scores]
    rows = ["| metric | value | chance |", "|---|---|---|"]
    low = []
    for key in first + sorted(k for k in scores if k not in first):
        level = chance_level(key, numbers)
        cell = "—" if level is None else f"{number(level[0])} ({level[1]})"
        if level is not None and numbers[key] <= level[0]:
            low.append(key)
        name = f"**{key}**" if key in first else key
        rows.append(f"| {name} | {number(numbers[key])} | {cell} |")
    return rows, low


def write_run_report(out: Path, metrics: dict[str, Any], description: str = "",
                     provenance: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write ``out/report.md`` and ``out/curves.png``; returns the report.

    Args:
        out: the run folder (its ``recipe.yaml`` and ``tb/`` are read).
        metrics: the final metrics (``metrics.json`` without its provenance).
        description: the recipe's description.
        provenance: :func:`vlkit.provenance.record`: what produced the figures.
        name: the recipe as the user named it (``albef/tiny``, a file); None: the shipped recipe with
            this description, if there is exactly one (and the report says it was matched so).
    """
    recipe = read_run_recipe(out)
    train = recipe.get("train") or {}
    logged = logged_scalars(out)
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    timing = run_timing(logged, sessions(out))

    losses = {t: p for t, p in sorted(logged.items(), key=lambda kv: (kv[0] != "loss/total", kv[0]))
              if t.startswith("loss/")}
    evals = {t: p for t, p in logged.items() if t.startswith("eval/") and is_score(t.removeprefix("eval/"))}
    last_step = max((p[-1].step for p in logged.values() if p), default=None)
    note = eval_note(evals, train, last_step)
    shown_evals = [f"eval/{k}" for k in HEADLINE if len(evals.get(f"eval/{k}", [])) >= 2][:EVAL_CURVES]
    series: dict[str, list[Scalar]] = {**losses, **{t: logged[t] for t in ("lr", "samples_per_s") if t in logged},
                                       **{t: evals[t] for t in shown_evals}}
    chance = {t: level[0] for t in shown_evals if (level := chance_level(t.removeprefix("eval/"), numbers))}
    plot_curves(series, chance, note, out / "curves.png")

    lines = [f"# {out.name}", ""] + ([description, ""] if description else [])
    given = name is not None
    name = name if given else recipe_name(str(recipe.get("description", description)))
    lines += ["## Recipe", "", *_table(settings_rows(recipe, name, given, numbers)), ""]

    run_rows = [("steps", number(numbers["steps"]) if "steps" in numbers else "?"),
                ("samples", number(numbers["samples"]) if "samples" in numbers else "?")]
    if timing is not None:
        run_rows += [("training time", f"{duration(timing.train_s)} (of which waiting for data "
                                       f"{duration(timing.data_s)})"),
                     ("throughput", f"{number(timing.samples_per_s)} samples/s")]
        run_rows.append(("wall time", f"{duration(timing.wall_s)} (first step to the end of the final evaluation)"
                         if timing.wall_s is not None else
                         f"not shown: the run was resumed ({timing.sessions} sessions in tb/), the span would "
                         "include the pause"))
    else:
        run_rows.append(("training time", "not logged (no time/* scalars in tb/)"))
    if "wall_s" in numbers:  # recorded by the run itself: preferred to the span of the TensorBoard log
        run_rows = [row for row in run_rows if row[0] != "wall time"]
        resumed = timing is not None and timing.sessions > 1
        run_rows.append(("wall time", f"{duration(numbers['wall_s'])} (" + (
            "the last session only: the run was resumed" if resumed else "the whole run: data preparation, model "
            "build, training, checkpoints, final evaluation") + "; `wall_s` in metrics.json)"))
    skipped = [f"{k.replace('_', ' ')} {number(numbers[k])}" for k in ("images_skipped", "annotations_skipped",
                                                                        "bad_samples") if numbers.get(k)]
    if skipped:
        run_rows.append(("skipped", ", ".join(skipped)))
    lines += ["## Run", "", *_table(run_rows), ""]
    if timing is not None:
        lines += ["Training time: the trainer's clock over the logged steps (intermediate checkpoints and "
                  "evaluations included); throughput: samples trained on / training time.", ""]

    if losses:
        step = max(p[-1].step for p in losses.values())
        lines += [f"## Final losses (step {number(step)})", "", "| loss | value |", "|---|---|"]
        lines += [f"| {t.removeprefix('loss/')} | {number(p[-1].value)} |" for t, p in losses.items()]
        lines += ["", f"Each is the mean over the last logging window (train.log_every = {train.get('log_every', '?')})"
                  ".", ""]

    table, low = metric_rows(numbers)
    lines += ["## Metrics", "", *table, ""]
    if low:
        lines += [f"At or below chance: {', '.join(f'`{k}`' for k in low)}.", ""]
    counts = [f"{k.removeprefix('n_').replace('_', ' ')} {number(numbers[k])}"
              for k in ("n_images", "n_texts", "n_swaps", "n", "n_classes", "n_answers", "box_n") if k in numbers]
    if counts:
        lines += [f"Evaluated on: {', '.join(counts)}.", ""]

    lines += ["![training curves](curves.png)", "",
              "Curves: " + (", ".join(f"`{t}`" for t in series) or "none logged") + " (TensorBoard: `tb/`)."]
    if note:
        lines.append(note)
    if provenance is not None:
        lines += provenance_lines(provenance)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
