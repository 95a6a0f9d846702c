"""Evaluating a checkpoint with a recipe's evaluation: what ``vlkit eval`` runs.

``run_evaluation(recipe, checkpoint, out_dir)`` builds the recipe's encoder and heads, loads the
checkpoint's online weights (the momentum teacher is not used, as in ALBEF's evaluation), runs the
recipe's ``eval`` section on its data source (retrieval recalls with ITM re-ranking, the swap probe),
or its ``task`` when it has one (e.g. zero-shot classification), and writes ``out_dir/metrics.json``
and ``out_dir/recipe.yaml``. Under ``torchrun`` the ranks share retrieval's queries and rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from vlkit import dist
from vlkit.recipe import Recipe
from vlkit.train.distributed import torchrun_scope
from vlkit.train.pretrain import Pretraining
from vlkit.weights.init_from import find_checkpoint, read_checkpoint

log = logging.getLogger("vlkit.eval")

IGNORED_PREFIXES = ("teacher.",)  # evaluation runs the online model


class CheckpointMismatch(ValueError):
    """The checkpoint's weights do not fit the recipe's model."""


def load_online_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every weight of ``model`` except the momentum teacher's from ``state``; returns the
    checkpoint keys the model has no place for (e.g. heads of objectives the recipe switched off).

    Raises:
        CheckpointMismatch: a weight of the model is missing from ``state`` or has another shape.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(IGNORED_PREFIXES)}
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        problems = [f"{len(missing)} missing (first: {', '.join(missing[:4])})"] if missing else []
        problems += [f"{len(wrong)} of another shape (first: {'; '.join(wrong[:3])})"] if wrong else []
        raise CheckpointMismatch(
            "the checkpoint does not fit the recipe's model: " + ", ".join(problems) + ". Evaluate with the "
            "recipe the checkpoint was trained with (a run folder keeps it as recipe.yaml; every checkpoint "
            "stores it too), with only data / eval keys overridden.")
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    unused = sorted(k for k in state if k not in own and not k.startswith(IGNORED_PREFIXES))
    if unused:
        log.info("checkpoint weights the recipe does not use: %d (first: %s)", len(unused), ", ".join(unused[:4]))
    return unused


def task_metrics(run: Pretraining, recipe: Recipe) -> dict[str, float]:
    """Run ``recipe.task``'s evaluation on the built model."""
    assert run.task is not None
    return run.task.evaluate(run.task_context())


def run_evaluation(recipe: Recipe, checkpoint: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a file or a run folder) with ``recipe``'s evaluation into ``out_dir``.

    Returns:
        the metrics (also in ``out_dir/metrics.json``), with the ``checkpoint`` path and its ``step``.
    """
    with torchrun_scope():
        return _evaluate(recipe, find_checkpoint(checkpoint), Path(out_dir))


def _evaluate(recipe: Recipe, path: Path, out: Path) -> dict[str, Any]:
    run = Pretraining(recipe, out, train_data=False)
    state = read_checkpoint(path)
    load_online_weights(run.model, state["model"])
    run.model.eval()
    if recipe.task is not None:
        log.info("evaluating %s (step %d): task `%s`", path, int(state["step"]), recipe.task.type)
        metrics: dict[str, Any] = dict(task_metrics(run, recipe))
    else:
        evaluator = run.evaluator()
        if evaluator is None:
            raise ValueError(f"the recipe's data source has no evaluation split `{recipe.eval.split}`; "
                             "set eval.split to one it has")
        log.info("evaluating %s (step %d) on the `%s` split", path, int(state["step"]), recipe.eval.split)
        metrics = dict(evaluator())
    metrics.update(step=int(state["step"]), checkpoint=str(path))
    if not dist.is_main():
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "metrics.json")
    return metrics
