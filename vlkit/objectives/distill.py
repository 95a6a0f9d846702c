"""Momentum distillation, shared by ITC and MLM (ALBEF §MoD): soft targets from the momentum teacher
mixed into the hard targets with a weight ``alpha`` that ramps up linearly."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from vlkit.core.ranges import check_count, check_number


@dataclass(kw_only=True)
class DistillConfig:
    """Momentum distillation.

    Attributes:
        alpha: final weight of the teacher's soft targets (ALBEF: 0.4).
        ramp_steps: ``alpha`` grows linearly from 0 over the first steps of distillation (ALBEF: the
            first epoch); 0 means constant ``alpha``. Distillation starts with the teacher (see
            ``momentum.warmup_steps``).
    """

    alpha: float = 0.4
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_count("ramp_steps", self.ramp_steps, low=0)

    def alpha_at(self, step: int) -> float:
        """``alpha`` after ``step`` steps of distillation (a Python float: no device work); 0 before
        distillation starts (negative ``step``)."""
        if step < 0:
            return 0.0
        if self.ramp_steps <= 0:
            return self.alpha
        return self.alpha * min(1.0, step / self.ramp_steps)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-Σ targets · log_softmax(logits)``; ``[N, C]`` each → scalar."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mix_targets(hard: Tensor, teacher_logits: Tensor | None, alpha: float) -> Tensor:
    """``alpha · softmax(teacher_logits) + (1 − alpha) · hard`` (``hard`` when there is no teacher)."""
    if teacher_logits is None or alpha == 0.0:
        return hard
    return alpha * F.softmax(teacher_logits.float(), dim=-1) + (1.0 - alpha) * hard
