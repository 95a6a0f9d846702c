"""Evaluating a checkpoint with a recipe's evaluation: what ``vlkit eval`` runs.

``run_evaluation(recipe, checkpoint, out_dir)`` builds the recipe's encoder and heads, loads the
checkpoint's online weights (the momentum teacher is not used, as in ALBEF's evaluation), runs the
recipe's ``eval`` section on its data source (retrieval recalls with ITM re-ranking, the swap probe),
or its ``task`` when it has one (e.g. zero-shot classification), and writes ``out_dir/metrics.json``
(with its ``provenance``: :mod:`vlkit.provenance`) and ``out_dir/recipe.yaml``. Under ``torchrun`` the
ranks share retrieval's queries and rank 0 writes.

A checkpoint whose evaluated weights hold NaN or infinite values is refused
(:class:`~vlkit.core.errors.NonFiniteError`), and so is any non-finite score (:mod:`vlkit.eval.finite`):
no metric comes from numbers that are not numbers. The output folder is held for the evaluation
(:mod:`vlkit.train.run_folder`), and its ``metrics.json`` / ``recipe.yaml`` are replaced only with
``overwrite``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from vlkit import dist, provenance
from vlkit.core.errors import DataError, NonFiniteError
from vlkit.recipe import Recipe
from vlkit.train import run_folder
from vlkit.train.devices import resolve_device
from vlkit.train.distributed import init_from_environment, torchrun_scope
from vlkit.train.pretrain import Pretraining
from vlkit.weights import checkpoints as ckpt
from vlkit.weights.init_from import find_checkpoint, read_checkpoint

log = logging.getLogger("vlkit.eval")

IGNORED_PREFIXES = ("teacher.",)  # evaluation runs the online model


class CheckpointMismatch(ValueError):
    """The checkpoint's weights do not fit the recipe's model."""


def load_online_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint") \
        -> list[str]:
    """Load every weight of ``model`` except the momentum teacher's from ``state``; returns the
    checkpoint keys the model has no place for (e.g. heads of objectives the recipe switched off).

    Raises:
        CheckpointMismatch: a weight of the model is missing from ``state`` or has another shape.
        NonFiniteError: a weight to load holds NaN or infinite values (``source`` names the file).
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
    bad = ckpt.nonfinite_keys({k: state[k] for k in own})
    if bad:
        raise NonFiniteError(
            f"{source} holds NaN or infinite values in {len(bad)} of the {len(own)} weights the evaluation would load "
            f"(first: {', '.join(bad[:4])}): any metric computed from them would be meaningless (a NaN score "
            "compares false with everything), so none is. Evaluate an earlier checkpoint of the run; vlkit's trainer "
            "never writes a non-finite one")
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    unused = sorted(k for k in state if k not in own and not k.startswith(IGNORED_PREFIXES))
    if unused:
        log.info("checkpoint weights the recipe does not use: %d (first: %s)", len(unused), ", ".join(unused[:4]))
    return unused


def task_metrics(run: Pretraining, recipe: Recipe) -> dict[str, float]:
    """Run ``recipe.task``'s evaluation on the built model."""
    assert run.task is not None
    return run.task.evaluate(run.task_context())


def run_evaluation(recipe: Recipe, checkpoint: str | Path, out_dir: str | Path, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a file or a run folder) with ``recipe``'s evaluation into ``out_dir``.

    Args:
        overwrite: replace ``out_dir``'s ``metrics.json`` / ``recipe.yaml`` (a training run's or an earlier
            evaluation's); without it they are refused.

    Returns:
        the metrics (also in ``out_dir/metrics.json``, with their ``provenance``), with the ``checkpoint``
        path and its ``step``.

    Raises:
        RunFolderBusy: another process holds ``out_dir``.
        RunFolderTaken: ``out_dir`` holds ``metrics.json`` / ``recipe.yaml`` and ``overwrite`` is off.
        NonFiniteError: the checkpoint's weights, or the evaluation's scores, are not finite.
    """
    with torchrun_scope():
        out = Path(out_dir)
        init_from_environment(resolve_device(recipe.train.device))  # the ranks agree on the folder checks
        with run_folder.locked(out, "vlkit eval"):
            run_folder.agreed(lambda: run_folder.claim_for_evaluation(out, overwrite=overwrite))
            return _evaluate(recipe, find_checkpoint(checkpoint), out)


def _evaluate(recipe: Recipe, path: Path, out: Path) -> dict[str, Any]:
    run = Pretraining(recipe, out, train_data=False)
    state = read_checkpoint(path)
    load_online_weights(run.model, state["model"], source=str(path))
    run.model.eval()
    if recipe.task is not None:
        log.info("evaluating %s (step %d): task `%s`", path, int(state["step"]), recipe.task.type)
        metrics: dict[str, Any] = dict(task_metrics(run, recipe))
    else:
        evaluator = run.evaluator()
        if evaluator is None:
            raise DataError(f"the recipe's data source has no evaluation split `{recipe.eval.split}`; "
                             "set eval.split to one it has")
        log.info("evaluating %s (step %d) on the `%s` split", path, int(state["step"]), recipe.eval.split)
        metrics = dict(evaluator())
    metrics.update(step=int(state["step"]), checkpoint=str(path))
    if not dist.is_main():
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    record = provenance.record(recipe_yaml=recipe.to_yaml(), seed=recipe.seed, step=int(state["step"]),
                               device=run.device, world_size=run.world,
                               eval_data=provenance.evaluation_data(recipe, run.source, metrics),
                               checkpoint=provenance.fingerprint(path))
    ckpt.write_text_atomic(out / "recipe.yaml", recipe.to_yaml())
    ckpt.write_text_atomic(out / "metrics.json", json.dumps({**metrics, "provenance": record}, indent=2,
                                                            sort_keys=True) + "\n")
    return metrics
