"""What an objective returns for one step, and the roles its heads play outside training."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

MATCH_HEAD = "match"
"""Head role: image-text match logits ``[N, D]`` → ``[N, 2]`` over fused pairs; evaluation re-ranks
retrieval candidates and scores the swap probe with it."""
CLASSIFY_HEAD = "classify"
"""Head role: class logits over fused pairs (downstream classification tasks)."""
ANSWER_HEAD = "answer"
"""Head role: the answer decoder that generates and ranks VQA answers from fused question states."""
BOX_HEAD = "box"
"""Head role: a phrase's box from its fused tokens."""


@dataclass
class ObjectiveOutput:
    """What an objective returns for one step.

    Attributes:
        loss: scalar loss (before the recipe weight is applied).
        metrics: extra scalars to log (detached 0-d tensors; logged every N steps, never ``.item()``-ed
            in the step).
        schedule: the objective's schedule values at this step (host floats, e.g. the distillation
            ``alpha``), logged as ``<key>/<objective>``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    schedule: dict[str, float] = field(default_factory=dict)
