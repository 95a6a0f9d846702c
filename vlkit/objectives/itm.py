"""Image-text matching (ITM): a binary head on the fused representation of B positive pairs, B pairs
(text b, negative image) and B pairs (image b, negative text), fused in one call that reuses the
step's image keys/values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F

from vlkit import registry
from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput
from vlkit.objectives.negatives import NegativeSampler
from vlkit.objectives.step import Step
from vlkit.registry import register
from vlkit.schema import Component, ComponentConfig, RegistryName


@dataclass(kw_only=True)
class ITMConfig(ObjectiveConfig):
    """Image-text matching.

    Attributes:
        negatives: the negative sampler (registry kind ``negatives``): ``random``, ``in_batch_hard``
            (ALBEF) or ``global_hard`` (VLMo); a name or ``{type: name, ...settings}``.
        head: the match head (registry kind ``head``); ``itm`` is ALBEF's / VLMo's ``Linear(D, 2)``.
    """

    negatives: Annotated[Any, Component("negatives")] = field(
        default_factory=lambda: ComponentConfig(type="in_batch_hard"))
    head: Annotated[str, RegistryName("head")] = "itm"

    requires_fusion: ClassVar[bool] = True


@register("objective", "itm")
class ITM(Objective):
    """Image-text matching with a pluggable negative sampler."""

    Config = ITMConfig

    def __init__(self, cfg: ITMConfig, name: str = "itm", ctx: ObjectiveContext | None = None) -> None:
        super().__init__(cfg, name, ctx)
        if ctx is None:
            raise ValueError("ITM needs the encoder to size its head (pass ctx)")
        self.head = registry.get("head", cfg.head).target.build(ctx.encoder)
        entry = registry.get("negatives", cfg.negatives.type)
        self.sampler: NegativeSampler = entry.target(cfg.negatives)

    def forward(self, step: Step) -> ObjectiveOutput:
        b = step.batch.size
        neg = self.sampler.sample(step)
        rows = torch.arange(b, device=step.batch.idx.device)
        if neg.images is None and neg.texts is None:  # in-batch negatives: one fusion call over 3B pairs
            fused = step.fuse(image_index=torch.cat((rows, neg.image_index, rows)),
                              text_index=torch.cat((rows, rows, neg.text_index))).cls
        else:  # negatives from elsewhere (other ranks): positives, (text b, negative image), (negative text, image b)
            fused = torch.cat((step.fuse(image_index=rows, text_index=rows).cls,
                               self._fuse_negative_images(step, neg, rows),
                               step.fuse(text=neg.texts if neg.texts is not None else step.text, image_index=rows,
                                         text_index=neg.text_index).cls))
        logits = self.head(fused)
        labels = torch.cat((torch.ones(b, dtype=torch.long, device=rows.device),
                            torch.zeros(2 * b, dtype=torch.long, device=rows.device)))
        weights = torch.cat((torch.ones(b, device=rows.device), neg.image_valid, neg.text_valid))
        per_pair = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = (per_pair * weights).sum() / weights.sum()
        correct = (logits.argmax(1) == labels).float()
        return ObjectiveOutput(loss=loss, metrics={
            "acc": ((correct * weights).sum() / weights.sum()).detach(),
            "valid_negatives": (neg.image_valid.mean() + neg.text_valid.mean()).detach() / 2,
        })

    @staticmethod
    def _fuse_negative_images(step: Step, neg: Any, rows: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` fused [CLS] of (text b, negative image b)."""
        if neg.images is None:
            return step.fuse(image_index=neg.image_index, text_index=rows).cls
        return step.encoder.fuse(neg.images, step.text, image_index=neg.image_index, text_index=rows).cls
