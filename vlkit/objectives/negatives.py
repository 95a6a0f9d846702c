"""Negative samplers for image-text matching (registry kind ``negatives``).

Each draws, for every sample ``b`` of the batch, a negative image for text ``b`` and a negative text
for image ``b`` in one vectorized ``torch.multinomial`` call (no Python loop, no host sync). Pairs
with the same image ``idx`` as ``b`` (its positive and other captions of its image) are never drawn.
A row with no admissible candidate (batch size 1, or every sample of the batch from one image) gets
a placeholder index and a zero weight, so its negative pair contributes nothing to the loss instead
of crashing ``multinomial`` ("invalid multinomial distribution") or teaching a wrong label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlkit.objectives.step import Step
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError


@dataclass
class Negatives:
    """Drawn negatives, each ``[B]``.

    Attributes:
        image_index: row of the negative image for text ``b``.
        text_index: row of the negative text for image ``b``.
        image_valid: 1.0 where ``image_index[b]`` is a real negative, 0.0 for a placeholder.
        text_valid: likewise for ``text_index``.
    """

    image_index: Tensor
    text_index: Tensor
    image_valid: Tensor
    text_valid: Tensor


def draw(weights: Tensor) -> tuple[Tensor, Tensor]:
    """One sample per row of non-negative ``weights`` ``[B, C]`` (need not be normalized).

    Returns:
        ``index`` ``[B]`` and ``valid`` ``[B]`` (float); rows whose weights are all zero (or not
        finite) draw uniformly and are marked invalid.
    """
    weights = torch.nan_to_num(weights.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    valid = weights.sum(1) > 0
    safe = torch.where(valid[:, None], weights, torch.ones_like(weights))
    return torch.multinomial(safe, 1).squeeze(1), valid.float()


def admissible(idx: Tensor) -> Tensor:
    """``[B, B]`` bool: True where column ``j`` may be a negative of row ``b`` (different image)."""
    return idx[:, None] != idx[None, :]


class NegativeSampler:
    """Base of negative samplers: ``sample(step) -> Negatives``."""

    def __init__(self, cfg: ComponentConfig | None = None) -> None:
        self.cfg = cfg

    def sample(self, step: Step) -> Negatives:
        raise NotImplementedError


@register("negatives", "random")
class RandomNegatives(NegativeSampler):
    """Uniform over the other images / texts of the batch (the ALBEF ablation's 'MLM + ITM')."""

    def sample(self, step: Step) -> Negatives:
        ok = admissible(step.batch.idx).float()
        image_index, image_valid = draw(ok)
        text_index, text_valid = draw(ok)
        return Negatives(image_index, text_index, image_valid, text_valid)


def masked_softmax(logits: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the allowed entries of each row (0 elsewhere; all-zero rows stay zero)."""
    probs = torch.softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)
    return torch.nan_to_num(probs, nan=0.0)


@dataclass(kw_only=True)
class HardNegativesConfig(ComponentConfig):
    """Settings of the similarity-weighted samplers.

    Attributes:
        ramp_steps: curriculum for training from scratch (a vlkit option; 0 = the papers). The
            sampling weights are ``softmax(h · logits)`` with the hardness ``h`` rising linearly from 0
            (uniform: random negatives) at step 0 to 1 (ALBEF's ``softmax(logits)``) at ``ramp_steps``.
            From random initialization, hard negatives from the first step leave ITM at the constant
            answer "no match": the fusion layers never find out which image tokens matter.
    """

    ramp_steps: int = 0

    def __post_init__(self) -> None:
        if self.ramp_steps < 0:
            raise ConfigError(f"ramp_steps must be ≥ 0, got {self.ramp_steps}", key="ramp_steps")

    def hardness(self, step: int) -> float:
        """Multiplier of the contrastive logits at 0-based ``step``, in [0, 1]."""
        return 1.0 if self.ramp_steps == 0 else min(1.0, step / self.ramp_steps)


@register("negatives", "in_batch_hard")
class InBatchHardNegatives(NegativeSampler):
    """ALBEF's hard negatives: candidates drawn with probability softmax(contrastive logits), within
    the batch, the positive and same-``idx`` pairs excluded."""

    Config = HardNegativesConfig

    def __init__(self, cfg: ComponentConfig | None = None) -> None:
        super().__init__(cfg if isinstance(cfg, HardNegativesConfig) else HardNegativesConfig(type="in_batch_hard"))

    @torch.no_grad()
    def sample(self, step: Step) -> Negatives:
        sim = step.sim
        ok = admissible(step.batch.idx)
        hardness = self.cfg.hardness(step.index)
        # hard negative text for each image, hard negative image for each text
        text_index, text_valid = draw(masked_softmax(sim.i2t * hardness, ok))
        image_index, image_valid = draw(masked_softmax(sim.t2i * hardness, ok))
        return Negatives(image_index, text_index, image_valid, text_valid)


@register("negatives", "global_hard")
class GlobalHardNegatives(InBatchHardNegatives):
    """VLMo's hard negatives, drawn from the global batch of all ranks by softmax(contrastive logits)
    and re-encoded locally; in a single process the global batch is the local one, so this equals
    ``in_batch_hard``."""
