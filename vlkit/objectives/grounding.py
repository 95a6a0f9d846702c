"""Phrase grounding: regress each annotated phrase's box from its fused caption tokens.

X-VLM (Zeng et al., 2022) adds box prediction to image-text pre-training: given the image and a
phrase, an MLP on the fused representation predicts the phrase's box, trained with L1 + generalized
IoU. Here the phrases are grounded *inside* their caption, as in MDETR / GLIP's token-level
alignment: the caption of each positive pair is fused once with its image, the fused tokens of each
annotated phrase (``phrases`` in the annotations, :mod:`vlkit.data.phrases`) are pooled, and
:class:`~vlkit.heads.box.BoxHead` predicts the box. This is not an ALBEF or VLMo objective; it is what
teaches the fusion layers *where* each phrase's object is, the lower-order signal that relational
image-text matching ("the blue square is above the yellow circle" against "... below ...") builds on
(see research/README.md for the measurements).

Loss per phrase, averaged over the batch's phrases: ``l1_weight · |b̂ − b|₁ + giou_weight · (1 − GIoU(b̂, b))``
with boxes ``(cx, cy, w, h)`` as fractions of the image side (X-VLM: both weights 1; GIoU as
torchvision computes it, without its host syncs). A batch without
phrases contributes a zero loss that still touches the head (so distributed training sees every
parameter used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from vlkit.core.batch import PHRASE_REGIONS, PhraseRegions
from vlkit.core.loader import LoaderRequest, PhraseRegionsRequest
from vlkit.core.outputs import BOX_HEAD, ObjectiveOutput
from vlkit.core.ranges import check_number
from vlkit.core.step import StepView
from vlkit.heads.base import HeadShape
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.registry import register
from vlkit.schema import RegistryName


@dataclass(kw_only=True)
class GroundingConfig(ObjectiveConfig):
    """Phrase grounding by box regression.

    Attributes:
        pool: how a phrase's fused tokens become one vector: ``mean`` over its tokens, or its ``last``
            token (the head noun of an English noun phrase).
        l1_weight: weight of the L1 distance of ``(cx, cy, w, h)``.
        giou_weight: weight of ``1 − GIoU``.
        head: the box head (registry kind ``head``).
    """

    pool: Literal["mean", "last"] = "mean"
    l1_weight: float = 1.0
    giou_weight: float = 1.0
    head: Annotated[str, RegistryName("head")] = "box"

    requires_fusion: ClassVar[bool] = True
    reads_boxes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("l1_weight", self.l1_weight, 0)
        check_number("giou_weight", self.giou_weight, 0)

    def loader_requests(self) -> tuple[LoaderRequest, ...]:
        return (PhraseRegionsRequest(),)


def step_regions(step: StepView) -> PhraseRegions:
    """The step's phrase regions; an error naming the fix when the loader did not prepare them."""
    regions: PhraseRegions | None = step.batch.extras.get(PHRASE_REGIONS)
    if regions is None:
        raise RuntimeError("the batch carries no phrase regions; the data pipeline must carry out this objective's "
                           "loader_requests()")
    return regions


def pool_phrases(tokens: Tensor, regions: PhraseRegions, how: str) -> Tensor:
    """Fused tokens ``[B, L, D]`` → one vector per phrase ``[P, D]`` (``mean`` or ``last`` of its tokens)."""
    rows = tokens.index_select(0, regions.rows)  # [P, L, D]
    mask = regions.tokens.to(rows.dtype)
    if how == "mean":
        return (rows * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    position = torch.arange(mask.shape[1], device=mask.device)
    last = (regions.tokens * position).argmax(1)
    return rows[torch.arange(len(rows), device=rows.device), last]


def _inter_union(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    lo, hi = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    union = (pred[:, 2:] - pred[:, :2]).prod(1) + (target[:, 2:] - target[:, :2]).prod(1) - inter
    return inter, union


def box_iou_pairs(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of matching rows of two ``[P, 4]`` ``(x1, y1, x2, y2)`` box sets → ``[P]``."""
    inter, union = _inter_union(pred, target)
    return inter / union.clamp(min=1e-7)


def giou_loss_pairs(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 − GIoU`` of matching rows of two ``[P, 4]`` ``(x1, y1, x2, y2)`` box sets → ``[P]``
    (Rezatofighi et al., 2019; torchvision's ``generalized_box_iou_loss`` without its boolean-mask
    indexing, which reads the device: no host sync inside a training step)."""
    inter, union = _inter_union(pred, target)
    iou = inter / (union + eps)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0)
    hull_area = hull.prod(1)
    return 1 - (iou - (hull_area - union) / (hull_area + eps))


@register("objective", "grounding")
class Grounding(Objective):
    """Box regression of annotated phrases from their fused caption tokens."""

    Config = GroundingConfig

    def __init__(self, cfg: GroundingConfig, name: str = "grounding", *, head: nn.Module) -> None:
        super().__init__(cfg, name)
        self.cfg: GroundingConfig = cfg
        self.head = head

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> Grounding:
        assert isinstance(cfg, GroundingConfig)
        return cls(cfg, name, head=parts.head(cfg.head, HeadShape(parts.encoder.width, 4)))

    def heads(self) -> dict[str, nn.Module]:
        return {BOX_HEAD: self.head}

    def forward(self, step: StepView) -> ObjectiveOutput:
        regions = step_regions(step)
        if regions.rows.numel() == 0:
            zero = sum(p.sum() for p in self.head.parameters()) * 0.0
            assert isinstance(zero, Tensor)  # a sum of tensors (the head has parameters)
            return ObjectiveOutput(loss=zero, metrics={"phrases": zero.detach()})
        pooled = pool_phrases(step.fused.text, regions, self.cfg.pool)
        pred = self.head(pooled).float()
        target = regions.boxes.float()
        pred_xyxy, target_xyxy = box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy")
        l1 = F.l1_loss(pred, target, reduction="none").sum(1).mean()
        giou = giou_loss_pairs(pred_xyxy, target_xyxy).mean()
        loss = self.cfg.l1_weight * l1 + self.cfg.giou_weight * giou
        with torch.no_grad():
            iou = box_iou_pairs(pred_xyxy, target_xyxy)
        return ObjectiveOutput(loss=loss, metrics={
            "l1": l1.detach(), "giou": giou.detach(), "iou": iou.mean(), "acc50": (iou >= 0.5).float().mean(),
            "phrases": torch.tensor(float(len(pred)), device=pred.device),
        })
