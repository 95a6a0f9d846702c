"""The objective plug-in contract.

An objective is a small ``nn.Module`` with a name, a weight, its own parameters (temperature,
queues, heads it owns) and ``forward(step) -> ObjectiveOutput``. It asks the step context for the
encodings it needs and never encodes anything itself; side effects (queue updates) happen in
``after_step``, called after the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from vlkit.schema import ComponentConfig


@dataclass(kw_only=True)
class ObjectiveConfig(ComponentConfig):
    """Settings every objective has.

    Attributes:
        weight: multiplier of this objective's loss in the total loss.
    """

    weight: float = 1.0


@dataclass
class ObjectiveOutput:
    """What an objective returns for one step.

    Attributes:
        loss: scalar loss (before the recipe weight is applied).
        metrics: extra scalars to log (detached tensors; logged every N steps, never ``.item()``-ed here).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of objectives.

    Args:
        cfg: the validated recipe section.
        name: the instance name in the recipe (``objectives.<name>``), used in log keys.
    """

    Config: type[ObjectiveConfig] = ObjectiveConfig

    def __init__(self, cfg: ObjectiveConfig, name: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def forward(self, step: Any) -> ObjectiveOutput:
        """Compute this objective's loss from the shared step context."""
        raise NotImplementedError

    def after_step(self, step: Any) -> None:
        """Side effects after the optimizer step (e.g. enqueue momentum features). Default: none."""
