"""A plug-in objective defined outside vlkit, registered with ``vlkit.register`` and named in a
recipe's ``imports:`` (the tests put this folder on ``sys.path``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import vlkit
from vlkit.objectives import Objective, ObjectiveConfig, ObjectiveOutput


@dataclass(kw_only=True)
class MarginConfig(ObjectiveConfig):
    """Settings of the toy objective."""

    margin: float = 0.2
    squared: bool = False


@vlkit.register("objective", "toy_margin")
class ToyMarginObjective(Objective):
    """Hinge on matched-pair cosine similarity: mean(relu(margin − s_ii))."""

    Config = MarginConfig

    def forward(self, step: dict[str, Tensor]) -> ObjectiveOutput:
        sim = (step["image_feat"] * step["text_feat"]).sum(-1)
        loss = torch.relu(self.cfg.margin - sim)
        loss = (loss**2 if self.cfg.squared else loss).mean()
        return ObjectiveOutput(loss=loss, metrics={"mean_sim": sim.mean().detach()})
