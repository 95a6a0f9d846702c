"""Checks a run passes before it trains, so that a figure it reports means what the recipe says.

- :func:`check_resume`: ``--resume`` continues the run the checkpoint holds. A recipe that changes the
  model, the data or the schedule would silently mix two runs (the optimizer and scheduler state come
  from the checkpoint, the rest from the new recipe) while ``recipe.yaml`` names only the new one:
  refused, naming the keys. Keys that cannot change the numbers (:data:`MAY_CHANGE_ON_RESUME`) may
  change; the run's ``recipe.yaml`` then records the new values, which is what runs from there on.
- :func:`require_annotations`: an objective that reads an annotation field (``phrases``,
  ``hard_negatives``; ``ObjectiveConfig.annotations``) when no training entry has it would train on
  nothing (a loss of 0.0 for the whole run): refused before training, naming the objective, the field
  and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from vlkit.core.batch import HARD_NEGATIVES
from vlkit.core.errors import UserError
from vlkit.data.json_dataset import Entry, EntryList
from vlkit.objectives.base import ObjectiveConfig
from vlkit.recipe import Recipe, validate_recipe
from vlkit.recipe_yaml import load_text

log = logging.getLogger("vlkit.train")

MAY_CHANGE_ON_RESUME = ("description", "eval", "train.log_every", "train.ckpt_every", "train.keep_last",
                        "train.eval_every", "train.max_steps", "train.save_weights", "train.cpu_threads",
                        "data.num_workers")
"""Recipe keys (and sections) a resumed run may change: bookkeeping, evaluation, where the run stops
(``max_steps``: the schedule spans ``steps``), host threads and loader processes. Everything else (the
model, the objectives, the data, the optimizer and its schedule, precision, the seed) must match."""


class ResumeMismatch(UserError):
    """``--resume`` with a recipe that changes the model, the data or the schedule of the run."""


class MissingAnnotations(UserError):
    """An objective reads an annotation field no training entry has."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _normalized(recipe_yaml: str) -> dict[str, Any]:
    """A stored recipe as this vlkit resolves it (defaults added since filled in), flattened."""
    raw = load_text(recipe_yaml, "the checkpoint's recipe")[0] or {}
    try:
        raw = yaml.safe_load(validate_recipe(raw).to_yaml())
    except (UserError, ValueError) as err:  # written by another vlkit: compare what it says
        log.debug("the stored recipe does not validate here (%s); comparing it as written", err)
    return _flat(raw)


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE_ON_RESUME)


def recipe_changes(stored_yaml: str, recipe: Recipe) -> tuple[list[str], list[str]]:
    """The keys ``recipe`` changes relative to the stored recipe: those that change the numbers
    (``key: stored → now``) and those that may change (names)."""
    before, now = _normalized(stored_yaml), _flat(yaml.safe_load(recipe.to_yaml()))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k, "<absent>") != now.get(k, "<absent>"))
    refused = [f"{k}: {before.get(k, '<absent>')!r} → {now.get(k, '<absent>')!r}" for k in changed
               if not _may_change(k)]
    return refused, [k for k in changed if _may_change(k)]


def check_resume(stored_yaml: str | None, recipe: Recipe, checkpoint: Path, out: Path) -> None:
    """Refuse resuming ``checkpoint`` with a ``recipe`` that changes the model, data or schedule.

    Raises:
        ResumeMismatch: naming every such key with the checkpoint's value and the new one.
    """
    if stored_yaml is None:
        log.warning("--resume: %s stores no recipe; cannot check that this recipe continues its run", checkpoint)
        return
    refused, allowed = recipe_changes(stored_yaml, recipe)
    if refused:
        shown = "; ".join(refused[:12]) + (f"; and {len(refused) - 12} more" if len(refused) > 12 else "")
        raise ResumeMismatch(
            f"--resume: this recipe changes the run {checkpoint} was trained with, in keys that change the model, "
            f"the data or the schedule: {shown}. Resume with the run's own recipe ({out / 'recipe.yaml'}), or train "
            "the change as a new run (another --out, or init_from=" + str(out) + "). Keys that may change on "
            f"resume: {', '.join(MAY_CHANGE_ON_RESUME)}")
    if allowed:
        log.info("--resume: %s changed (they do not change the model or its schedule); recipe.yaml records the "
                 "new values", ", ".join(allowed))


ANNOTATION_FIELDS: dict[str, Callable[[Entry], bool]] = {
    "phrases": lambda e: e.phrases is not None and any(e.phrases),
    HARD_NEGATIVES: lambda e: e.hard_negatives is not None and any(e.hard_negatives),
}
"""Annotation field → whether a training entry has it (for at least one caption)."""

HOW_TO_ANNOTATE = {
    "phrases": "give the training entries `phrases` (boxes of caption spans; docs/data.md says how; "
               "the synthetic data has them)",
    HARD_NEGATIVES: "give the training entries `hard_negatives` (captions false for the image; docs/data.md says "
                    "how; the synthetic data has them)",
}


def require_annotations(objectives: Mapping[str, ObjectiveConfig], entries: EntryList | None, split: str) -> None:
    """Every objective's annotation fields appear in at least one training entry (``entries`` None: a
    shard stream, which carries none).

    Raises:
        MissingAnnotations: naming the objective, the field and the fix.
    """
    for name, cfg in objectives.items():
        for field in sorted(cfg.annotations):
            has = ANNOTATION_FIELDS.get(field)
            fix = (f"{HOW_TO_ANNOTATE.get(field, f'give the training entries `{field}`')}, or remove the objective "
                   f"(objectives.{name}=null)")
            if entries is None:
                raise MissingAnnotations(
                    f"objectives.{name} ({cfg.type}) reads the `{field}` annotations, but this run trains on a shard "
                    f"stream, which carries none: the objective would have nothing to act on. Train from "
                    f"annotation lists and {fix}")
            if has is None:
                log.warning("objectives.%s (%s) reads annotation field `%s`, which vlkit cannot check in the training "
                            "entries", name, cfg.type, field)
                continue
            if not any(has(e) for e in entries.entries):
                raise MissingAnnotations(
                    f"objectives.{name} ({cfg.type}) reads the `{field}` annotations, but none of the "
                    f"{len(entries.entries)} `{split}` entries has any: the objective would have nothing to act on "
                    f"(a loss of 0 for the whole run). {fix[0].upper()}{fix[1:]}")
