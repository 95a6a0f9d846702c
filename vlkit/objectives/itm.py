"""Image-text matching (ITM): a binary head on the fused representation of B positive pairs (the
step's memoized ``fused`` pairs), B pairs (text b, negative image) and B pairs (image b, negative text),
the negatives fused in one call; every fusion reuses the step's image keys/values. Optionally
(``hard_negatives``) B more pairs (image b, an annotated hard-negative caption of caption b),
NegCLIP-style (:mod:`vlkit.data.hard_negatives`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.batch import HARD_NEGATIVES, HardNegativeText
from vlkit.core.loader import HardNegativesRequest, LoaderRequest
from vlkit.core.outputs import MATCH_HEAD, ObjectiveOutput
from vlkit.core.ranges import check_number
from vlkit.core.similarity import Negatives
from vlkit.core.step import StepView
from vlkit.heads.base import HeadShape
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.negatives import HardNegativesConfig, NegativeSampler, SamplerConfig
from vlkit.registry import register
from vlkit.schema import Component, RegistryName


@dataclass(kw_only=True)
class ITMConfig(ObjectiveConfig):
    """Image-text matching.

    Attributes:
        negatives: the negative sampler (registry kind ``negatives``): ``random``, ``in_batch_hard``
            (ALBEF) or ``global_hard`` (VLMo); a name or ``{type: name, ...settings}``.
        head: the match head (registry kind ``head``); ``itm`` is ALBEF's / VLMo's ``Linear(D, 2)``.
        hard_negatives: weight of the extra (image b, annotated negative caption of b) pairs relative to
            the other pairs (0: off, the papers). The negatives are captions the data marks false for
            the image (``hard_negatives`` in the annotations, e.g. attribute or relation swaps); rows
            whose caption has none, and batches without any, add nothing. Not an ALBEF / VLMo
            setting: NegCLIP's hard negatives moved to the matching head.
    """

    negatives: Annotated[SamplerConfig, Component("negatives")] = field(
        default_factory=lambda: HardNegativesConfig(type="in_batch_hard"))
    head: Annotated[str, RegistryName("head")] = "itm"
    hard_negatives: float = 0.0

    requires_fusion: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("hard_negatives", self.hard_negatives, 0)

    @property
    def needs_similarity(self) -> bool:
        return self.negatives.needs_similarity

    def loader_requests(self) -> tuple[LoaderRequest, ...]:
        return (HardNegativesRequest(),) if self.hard_negatives > 0 else ()


@register("objective", "itm")
class ITM(Objective):
    """Image-text matching with a pluggable negative sampler.

    Args:
        cfg: the settings.
        name: the instance name.
        head: the match head, ``[N, D]`` → ``[N, 2]``.
        sampler: draws the negatives.
    """

    Config = ITMConfig

    def __init__(self, cfg: ITMConfig, name: str = "itm", *, head: nn.Module, sampler: NegativeSampler) -> None:
        super().__init__(cfg, name)
        self.cfg: ITMConfig = cfg
        self.head = head
        self.sampler = sampler

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> ITM:
        assert isinstance(cfg, ITMConfig)
        return cls(cfg, name, head=parts.head(cfg.head, HeadShape(parts.encoder.width, 2)),
                   sampler=parts.sampler(cfg.negatives))

    def heads(self) -> dict[str, nn.Module]:
        return {MATCH_HEAD: self.head}

    def forward(self, step: StepView) -> ObjectiveOutput:
        b = step.batch.size
        neg = self.sampler.sample(step)
        rows = torch.arange(b, device=step.batch.idx.device)
        # positives: the step's fused pairs (shared with other objectives that read them, e.g. grounding)
        if neg.images is None and neg.texts is None:  # in-batch negatives: one fusion call over 2B pairs
            fused = torch.cat((step.fused.cls, step.fuse(image_index=torch.cat((neg.image_index, rows)),
                                                         text_index=torch.cat((rows, neg.text_index))).cls))
        else:  # negatives from elsewhere (other ranks): positives, (text b, negative image), (negative text, image b)
            fused = torch.cat((step.fused.cls,
                               self._fuse_negative_images(step, neg, rows),
                               step.fuse(text=neg.texts if neg.texts is not None else step.text, image_index=rows,
                                         text_index=neg.text_index).cls))
        weights = torch.cat((torch.ones(b, device=rows.device), neg.image_valid, neg.text_valid))
        annotated: HardNegativeText | None = step.batch.extras.get(HARD_NEGATIVES)
        use_annotated = self.cfg.hard_negatives > 0 and annotated is not None and annotated.count > 0
        if use_annotated:  # (image b, annotated negative of caption b)
            assert annotated is not None
            fused = torch.cat((fused, step.fuse(text=step.hard_negative_text, image_index=rows, text_index=rows).cls))
            valid = annotated.valid.to(weights.dtype)
            weights = torch.cat((weights, valid * self.cfg.hard_negatives))
        logits = self.head(fused)
        labels = torch.zeros(len(logits), dtype=torch.long, device=rows.device)
        labels[:b] = 1
        per_pair = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = (per_pair * weights).sum() / weights.sum()
        correct = (logits.argmax(1) == labels).float()
        metrics = {"acc": ((correct * weights).sum() / weights.sum()).detach(),
                   "valid_negatives": (neg.image_valid.mean() + neg.text_valid.mean()).detach() / 2}
        if use_annotated:
            metrics["hard_negative_acc"] = ((correct[3 * b:] * valid).sum() / valid.sum().clamp_min(1)).detach()
        return ObjectiveOutput(loss=loss, metrics=metrics)

    @staticmethod
    def _fuse_negative_images(step: StepView, neg: Negatives, rows: Tensor) -> Tensor:
        """``[B, D]`` fused [CLS] of (text b, negative image b)."""
        if neg.images is None:
            return step.fuse(image_index=neg.image_index, text_index=rows).cls
        return step.fuse(image=neg.images, image_index=neg.image_index, text_index=rows).cls
