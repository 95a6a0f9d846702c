"""Classification of fused image-text pairs — the fine-tuning objective of VE, NLVR2 and VQA (as
classification): a head on the fused [CLS] (of each image of a sample, concatenated), cross-entropy
with optional momentum distillation (ALBEF: ``(1 − α)·CE + α·CE(softmax(teacher))``), or VLMo's
binary cross-entropy against soft VQA scores, scaled by the number of answers.

Batch contract: ``images [k·B, 3, H, W]`` (the first images of all samples, then the second, ...),
text ``[B, L]``, and ``extras["labels"] [B]`` (class ids) or ``extras["targets"] [B, C]`` (soft scores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.batch import LABELS, TARGETS
from vlkit.core.encodings import FusedEncoding
from vlkit.core.errors import ConfigError
from vlkit.core.outputs import CLASSIFY_HEAD, ObjectiveOutput
from vlkit.core.ranges import MAX_ROWS, check_count
from vlkit.core.step import StepView
from vlkit.heads.base import HeadShape
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.distill import DistillConfig, mix_targets, soft_cross_entropy
from vlkit.registry import register
from vlkit.schema import RegistryName

MAX_IMAGES_PER_SAMPLE = 64
"""Images fused with one text (NLVR2: 2); more is a typo."""


@dataclass(kw_only=True)
class ClassifyConfig(ObjectiveConfig):
    """A classifier on fused pairs.

    Attributes:
        num_classes: classes (a task sets it: 3 for VE, 2 for NLVR2, the answer vocabulary for VQA).
        images_per_sample: images fused with each text; their [CLS] features are concatenated (NLVR2: 2).
        head: the head (registry kind ``head``): ``classifier`` (ALBEF) or ``classifier_vlmo``.
        loss: ``ce`` (labels) or ``soft_bce`` (soft scores; VLMo's VQA loss, × ``num_classes``).
        distill: momentum distillation of the class distribution (``ce`` only); null: off.
    """

    num_classes: int
    images_per_sample: int = 1
    head: Annotated[str, RegistryName("head")] = "classifier"
    loss: Literal["ce", "soft_bce"] = "ce"
    distill: DistillConfig | None = None

    requires_fusion: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("num_classes", self.num_classes, low=2, high=MAX_ROWS)
        check_count("images_per_sample", self.images_per_sample, high=MAX_IMAGES_PER_SAMPLE)
        if self.distill is not None and self.loss != "ce":
            raise ConfigError("momentum distillation applies to the `ce` loss only", key="distill")

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None


Fuse = Callable[..., FusedEncoding]
"""``fuse(image_index=..., text_index=...)`` → fused pairs (a step's, a teacher's or an encoder's)."""


def pair_features(fuse: Fuse, batch_size: int, images_per_sample: int, device: torch.device) -> Tensor:
    """``[B, k·D]``: the fused [CLS] of text ``b`` with each of its ``k`` images (rows ``j·B + b``)."""
    rows = torch.arange(batch_size, device=device)
    return torch.cat([fuse(image_index=rows + j * batch_size, text_index=rows).cls
                      for j in range(images_per_sample)], dim=-1)


@register("objective", "classify")
class Classify(Objective):
    """Fused-pair classification (see the module docstring)."""

    Config = ClassifyConfig

    def __init__(self, cfg: ClassifyConfig, name: str = "classify", *, head: nn.Module) -> None:
        super().__init__(cfg, name)
        self.cfg: ClassifyConfig = cfg
        self.head = head

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> Classify:
        assert isinstance(cfg, ClassifyConfig)
        width = parts.encoder.width
        return cls(cfg, name, head=parts.head(cfg.head, HeadShape(cfg.images_per_sample * width, cfg.num_classes,
                                                                  hidden=width)))

    def heads(self) -> dict[str, nn.Module]:
        return {CLASSIFY_HEAD: self.head}

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head} if self.cfg.distill is not None else {}

    def logits(self, fuse: Fuse, batch_size: int, device: torch.device, head: nn.Module | None = None) -> Tensor:
        """``[B, C]`` class logits of a batch of ``batch_size`` samples."""
        features = pair_features(fuse, batch_size, self.cfg.images_per_sample, device)
        return (head or self.head)(features)

    def forward(self, step: StepView) -> ObjectiveOutput:
        batch, cfg = step.batch, self.cfg
        device = batch.idx.device
        logits = self.logits(step.fuse, batch.size, device)
        if cfg.loss == "soft_bce":
            targets = batch.extras[TARGETS]
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * cfg.num_classes
            score = targets.gather(1, logits.argmax(1, keepdim=True)).float().mean()
            return ObjectiveOutput(loss, {"score": score.detach()})
        labels = batch.extras[LABELS]
        hard = F.one_hot(labels, cfg.num_classes).float()
        teacher_logits = None
        alpha = cfg.distill.alpha_at(step.teacher_steps) if cfg.distill is not None else 0.0
        if alpha > 0.0 and step.teacher_ready:
            teacher = step.teacher
            teacher_logits = self.logits(teacher.fuse, batch.size, device, head=teacher.module(f"{self.name}.head"))
        loss = soft_cross_entropy(logits, mix_targets(hard, teacher_logits, alpha))
        accuracy = (logits.argmax(1) == labels).float().mean()
        schedule = {} if cfg.distill is None else {"alpha": alpha}
        return ObjectiveOutput(loss, {"acc": accuracy.detach()}, schedule)
