"""The pre-training model: an encoder, the recipe's objectives and (when an objective needs it) the
momentum teacher. ``forward`` runs one step's objectives over a shared :class:`~vlkit.objectives.step.Step`;
``after_step`` applies the side effects (EMA update, queue enqueue) after the optimizer step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vlkit import registry
from vlkit.encoders.base import Encoder
from vlkit.models.momentum import MomentumConfig, MomentumTeacher
from vlkit.objectives.base import Objective, ObjectiveContext
from vlkit.objectives.step import Batch, Similarity, Step


@dataclass
class StepResult:
    """The outcome of one forward.

    Attributes:
        loss: the weighted total loss (scalar).
        losses: each objective's unweighted loss, ``loss/<name>``.
        metrics: each objective's metrics, ``metric/<name>/<key>`` (detached).
        step: the step context (``after_step`` reads the teacher features it holds).
    """

    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    step: Step | None = None


class PretrainModel(nn.Module):
    """Encoder + objectives + optional momentum teacher.

    Args:
        encoder: the online encoder.
        objectives: by recipe name, in recipe order.
        teacher: EMA copies, or None when no objective reads a teacher.
    """

    def __init__(self, encoder: Encoder, objectives: dict[str, Objective], teacher: MomentumTeacher | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.objectives = nn.ModuleDict(objectives)
        self.teacher = teacher

    def forward(self, batch: Batch, step_index: int = 0) -> StepResult:
        """Run every objective on ``batch``; returns the weighted total loss and the logs."""
        step = Step(self, batch, step_index)
        total: Tensor | None = None
        result = StepResult(loss=torch.zeros(()), step=step)
        for name, objective in self.objectives.items():
            with torch.profiler.record_function(f"objective/{name}"):  # the profiler's per-objective ranges
                out = objective(step)
            result.losses[f"loss/{name}"] = out.loss
            result.metrics.update({f"metric/{name}/{k}": v for k, v in out.metrics.items()})
            weighted = objective.cfg.weight_at(step_index) * out.loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise RuntimeError("the recipe has no objectives")
        result.loss = total
        return result

    def similarity(self, step: Step) -> Similarity:
        """In-batch contrastive logits from the first objective that defines them (hard negatives)."""
        for objective in self.objectives.values():
            if hasattr(objective, "in_batch_similarity"):
                return objective.in_batch_similarity(step)
        raise RuntimeError("hard negatives need a contrastive objective (e.g. itc) in the recipe")

    def global_similarity(self, step: Step) -> Similarity:
        """This rank's samples against the global batch (global hard negatives), from the first
        objective that defines it."""
        for objective in self.objectives.values():
            if hasattr(objective, "global_similarity"):
                return objective.global_similarity(step)
        raise RuntimeError("global hard negatives need a contrastive objective (e.g. itc) in the recipe")

    @torch.no_grad()
    def after_step(self, results: StepResult | list[StepResult]) -> None:
        """Side effects of a finished optimizer step: one EMA update, then each objective's hook for
        every micro-batch of the step (e.g. each one's teacher features are enqueued)."""
        results = results if isinstance(results, list) else [results]
        if self.teacher is not None:
            self.teacher.update(results[0].step.index)
        for result in results:
            for objective in self.objectives.values():
                objective.after_step(result.step)

    def batch_transforms(self) -> list[Any]:
        """What the data loader must apply to collated batches (e.g. MLM masking)."""
        return [t for o in self.objectives.values() if (t := o.batch_transform()) is not None]


def build_objectives(configs: dict[str, Any], ctx: ObjectiveContext) -> dict[str, Objective]:
    """Objective modules from validated recipe sections (registry kind ``objective``)."""
    return {name: registry.get("objective", cfg.type).target(cfg, name=name, ctx=ctx)
            for name, cfg in configs.items()}


def build_pretrain_model(encoder: Encoder, objective_configs: dict[str, Any], ctx: ObjectiveContext,
                         momentum: MomentumConfig | None) -> PretrainModel:
    """Assemble the model; the teacher is built when an objective needs it (and copies what they ask for)."""
    objectives = build_objectives(objective_configs, ctx)
    teacher = None
    if any(o.needs_teacher for o in objectives.values()):
        if momentum is None:
            needing = [n for n, o in objectives.items() if o.needs_teacher]
            raise ValueError(f"objectives {needing} need the momentum teacher; set the recipe's `momentum` section")
        extra = {f"{name}.{key}": module
                 for name, o in objectives.items() for key, module in o.teacher_modules().items()}
        teacher = MomentumTeacher(encoder, extra, momentum)
    return PretrainModel(encoder, objectives, teacher)
