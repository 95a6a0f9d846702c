"""The pre-training model: an encoder, the recipe's objectives and (when an objective needs it) the
momentum teacher. ``forward`` runs one step's objectives over a shared :class:`~vlkit.models.step.Step`;
``after_step`` applies the side effects (EMA update, queue enqueue) after the optimizer step.

:func:`assemble` puts built parts together (the objectives themselves are built at the edge,
:func:`vlkit.build.build_pretrain_model`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vlkit.core.batch import Batch
from vlkit.core.loader import LoaderRequest
from vlkit.core.outputs import MATCH_HEAD
from vlkit.core.step import SimilarityProvider
from vlkit.encoders.base import Encoder
from vlkit.models.momentum import MomentumConfig, MomentumTeacher
from vlkit.models.step import Step
from vlkit.objectives.base import Objective


@dataclass
class StepResult:
    """The outcome of one forward.

    Attributes:
        loss: the weighted total loss (scalar).
        losses: each objective's unweighted loss, ``loss/<name>``.
        metrics: each objective's metrics, ``metric/<name>/<key>`` (detached).
        schedule: each objective's schedule values, ``<key>/<name>`` (e.g. ``alpha/itc``; host floats).
        step: the step (``after_step`` reads the teacher features it holds).
    """

    loss: Tensor
    step: Step
    losses: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    schedule: dict[str, float] = field(default_factory=dict)


class PretrainModel(nn.Module):
    """Encoder + objectives + optional momentum teacher.

    Args:
        encoder: the online encoder.
        objectives: by recipe name, in recipe order.
        teacher: EMA copies, or None when no objective reads a teacher.
        similarity: the name of the objective that provides the step's contrastive similarities (the
            first whose config declares ``provides_similarity``), or None.
    """

    def __init__(self, encoder: Encoder, objectives: dict[str, Objective], teacher: MomentumTeacher | None,
                 similarity: str | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.objectives = nn.ModuleDict(objectives)
        self.teacher = teacher
        if similarity is not None and not isinstance(objectives[similarity], SimilarityProvider):
            raise TypeError(f"objective `{similarity}` declares provides_similarity but does not implement "
                            "in_batch_similarity / global_similarity (vlkit.core.step.SimilarityProvider)")
        self.similarity = similarity  # a name, not a module reference: the state dict holds each objective once

    def objective_list(self) -> list[tuple[str, Objective]]:
        """The objectives by name, in recipe order."""
        out = []
        for name, objective in self.objectives.items():
            if not isinstance(objective, Objective):
                raise TypeError(f"objective `{name}` is a {type(objective).__name__}, not a vlkit Objective")
            out.append((name, objective))
        return out

    def step(self, batch: Batch, step_index: int = 0) -> Step:
        """A step over ``batch`` with this model's encoder, similarity provider and teacher injected."""
        provider = None
        if self.similarity is not None:
            candidate = self.objectives[self.similarity]
            assert isinstance(candidate, SimilarityProvider)
            provider = candidate
        return Step(self.encoder, batch, step_index, similarity=provider, teacher=self.teacher)

    def forward(self, batch: Batch, step_index: int = 0) -> StepResult:
        """Run every objective on ``batch``; returns the weighted total loss and the logs."""
        step = self.step(batch, step_index)
        total: Tensor | None = None
        result = StepResult(loss=torch.zeros(()), step=step)
        for name, objective in self.objective_list():
            with torch.profiler.record_function(f"objective/{name}"):  # the profiler's per-objective ranges
                out = objective(step)
            result.losses[f"loss/{name}"] = out.loss
            result.metrics.update({f"metric/{name}/{k}": v for k, v in out.metrics.items()})
            result.schedule.update({f"{k}/{name}": v for k, v in out.schedule.items()})
            weighted = objective.cfg.weight_at(step_index) * out.loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise RuntimeError("the recipe has no objectives")
        result.loss = total
        return result

    @torch.no_grad()
    def after_step(self, results: StepResult | list[StepResult]) -> None:
        """Side effects of a finished optimizer step: one EMA update, then each objective's hook for
        every micro-batch of the step (e.g. each one's teacher features are enqueued)."""
        results = results if isinstance(results, list) else [results]
        if self.teacher is not None:
            self.teacher.update(results[0].step.index)
        for result in results:
            for _, objective in self.objective_list():
                objective.after_step(result.step)

    def loader_requests(self) -> list[LoaderRequest]:
        """What the data loader must prepare for the objectives (e.g. MLM masking), in objective order."""
        return [request for _, o in self.objective_list() for request in o.cfg.loader_requests()]

    def heads(self) -> dict[str, dict[str, nn.Module]]:
        """Each objective's heads by role (:meth:`Objective.heads`), by objective name."""
        return {name: heads for name, o in self.objective_list() if (heads := o.heads())}

    def match_head(self) -> nn.Module | None:
        """The first objective's :data:`~vlkit.core.outputs.MATCH_HEAD` (retrieval re-ranking, swap probe)."""
        return next((heads[MATCH_HEAD] for heads in self.heads().values() if MATCH_HEAD in heads), None)

    def init_aliases(self) -> dict[str, str]:
        """Every objective's :meth:`~vlkit.objectives.base.Objective.init_aliases`, as full model keys."""
        return {f"objectives.{name}.{own}": source for name, objective in self.objective_list()
                for own, source in objective.init_aliases().items()}


def assemble(encoder: Encoder, objectives: dict[str, Objective], momentum: MomentumConfig | None) -> PretrainModel:
    """The model from built parts: the teacher is built when an objective needs it (and copies what they
    ask for); the similarity provider is the first objective whose config declares ``provides_similarity``."""
    teacher = None
    if any(o.needs_teacher for o in objectives.values()):
        if momentum is None:
            needing = [n for n, o in objectives.items() if o.needs_teacher]
            raise ValueError(f"objectives {needing} need the momentum teacher; set the recipe's `momentum` section")
        extra = {f"{name}.{key}": module
                 for name, o in objectives.items() for key, module in o.teacher_modules().items()}
        teacher = MomentumTeacher(encoder, extra, momentum)
    provider = next((name for name, o in objectives.items() if o.cfg.provides_similarity), None)
    return PretrainModel(encoder, objectives, teacher, similarity=provider)
