"""Example vlkit plug-ins, defined outside the vlkit package (see docs/extending.md).

- ``siglip`` (objective): SigLIP's pairwise sigmoid contrastive loss with a learnable temperature and
  bias (Zhai et al., 2023): every image-text pair of the batch is an independent binary problem.
- ``hardest`` (negatives): the most similar non-matching candidate, deterministically.
- ``itm_mlp`` (head): a two-layer match head.

Use them from a recipe with ``imports: [vlkit_siglip]`` and this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vlkit
from vlkit.core import Negatives, ObjectiveOutput, Similarity, StepView
from vlkit.heads import Head, HeadShape
from vlkit.objectives import Objective, ObjectiveConfig
from vlkit.objectives.negatives import NegativeSampler, SamplerConfig, admissible


@dataclass(kw_only=True)
class SigLIPConfig(ObjectiveConfig):
    """SigLIP settings.

    Attributes:
        init_scale: initial logit scale ``t`` (learned as log t; SigLIP: 10).
        init_bias: initial logit bias ``b`` (SigLIP: −10, so that most pairs start as negatives).
    """

    init_scale: float = 10.0
    init_bias: float = -10.0

    provides_similarity: ClassVar[bool] = True  # hard-negative samplers can read its logits


@vlkit.register("objective", "siglip")
class SigLIP(Objective):
    """Pairwise sigmoid loss: ``-Σ_ij log σ(z_ij · (t · x_i·y_j + b)) / B`` with ``z_ij = ±1`` (same image)."""

    Config = SigLIPConfig

    def __init__(self, cfg: SigLIPConfig, name: str = "siglip") -> None:
        super().__init__(cfg, name)
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_scale)))
        self.bias = nn.Parameter(torch.tensor(cfg.init_bias))

    def logits(self, step: StepView) -> Tensor:
        """``[B, B]`` pair logits, computed once per step."""
        return step.memo(f"{self.name}:logits",
                         lambda: self.log_scale.exp() * step.image.feat @ step.text.feat.T + self.bias)

    def in_batch_similarity(self, step: StepView) -> Similarity:
        logits = self.logits(step).detach()
        return Similarity(i2t=logits, t2i=logits.T)

    def global_similarity(self, step: StepView) -> Similarity:
        return self.in_batch_similarity(step)  # one process: the global batch is the local one

    def forward(self, step: StepView) -> ObjectiveOutput:
        logits = self.logits(step)
        idx = step.batch.idx
        signs = 2.0 * (idx[:, None] == idx[None, :]).float() - 1.0
        loss = -F.logsigmoid(signs * logits.float()).sum() / logits.shape[0]
        return ObjectiveOutput(loss=loss, metrics={"scale": self.log_scale.exp().detach(), "bias": self.bias.detach()})


@dataclass(kw_only=True)
class HardestConfig(SamplerConfig):
    """``hardest`` has no settings; it reads the step's similarities."""

    needs_similarity: ClassVar[bool] = True


@vlkit.register("negatives", "hardest")
class HardestNegatives(NegativeSampler):
    """The single most similar candidate with a different image (no sampling)."""

    Config = HardestConfig

    @torch.no_grad()
    def sample(self, step: StepView) -> Negatives:
        allowed = admissible(step.batch.idx)
        valid = allowed.any(1).float()
        text_index = step.sim.i2t.masked_fill(~allowed, float("-inf")).argmax(1)
        image_index = step.sim.t2i.masked_fill(~allowed, float("-inf")).argmax(1)
        return Negatives(image_index, text_index, valid, valid)


@vlkit.register("head", "itm_mlp")
class MLPMatchHead(Head):
    """Match logits from the fused representation: ``[N, D]`` → ``[N, 2]`` through a hidden layer."""

    def __init__(self, dim: int, outputs: int = 2) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, outputs)

    @classmethod
    def from_shape(cls, shape: HeadShape) -> MLPMatchHead:
        return cls(shape.in_dim, shape.out_dim)

    def forward(self, fused_cls: Tensor) -> Tensor:
        return self.out(F.gelu(self.hidden(fused_cls)))
