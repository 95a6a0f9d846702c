"""NLVR2 the way ALBEF fine-tunes it: "bi-fusion" over both images of a sample at once.

The text runs through the encoder's text layers once; then :class:`~vlkit.nn.bifusion.BiFusionLayers`
(the encoder's ``F`` fusion layers duplicated into ``2F``, pairs sharing cross-attention keys/values,
even layers reading the first image, odd layers the second) fuse it with the pair, and a head
classifies the last layer's [CLS]. Loss: cross-entropy, with optional momentum distillation
``(1 − α)·CE − α·Σ softmax(teacher)·log_softmax(student)`` (the teacher's copies of the fusion layers
and the head, see :meth:`BiFusionClassify.teacher_modules`).

The objective owns its fusion layers: the encoder's own fusion layers are not run, get no gradient
(AdamW skips parameters without one, decay included) and keep their weights. ``init_from`` starts the
pairs from the checkpoint's fusion layers through :meth:`BiFusionClassify.init_aliases`.

Batch contract (``TaskCollate`` for NLVR2): ``images [2B, 3, H, W]`` (all first images, then all
second images), text ``[B, L]``, ``extras["labels"] [B]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.batch import LABELS
from vlkit.core.encodings import ImageEncoding, TextEncoding
from vlkit.core.errors import ConfigError
from vlkit.core.outputs import CLASSIFY_HEAD, ObjectiveOutput
from vlkit.core.ranges import MAX_ROWS, check_count
from vlkit.core.step import StepView
from vlkit.encoders.base import Encoder
from vlkit.heads.base import HeadShape
from vlkit.nn.bert import BertStack
from vlkit.nn.bifusion import BiFusionLayers
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.distill import DistillConfig, mix_targets, soft_cross_entropy
from vlkit.registry import register
from vlkit.schema import RegistryName

ENCODER_KEY = "encoder."
"""Where the model (:class:`~vlkit.models.model.PretrainModel`) keeps its encoder in a state dict."""


@dataclass(kw_only=True)
class BiFusionClassifyConfig(ObjectiveConfig):
    """A classifier on the bi-fused [CLS] of a text and its image pair.

    Attributes:
        num_classes: classes (NLVR2: 2, true / false).
        head: the head (registry kind ``head``): ``classifier`` (ALBEF's ``cls_head``) or ``classifier_vlmo``.
        distill: momentum distillation of the class distribution (ALBEF: alpha 0.4); null: off.
    """

    num_classes: int = 2
    head: Annotated[str, RegistryName("head")] = "classifier"
    distill: DistillConfig | None = None

    requires_fusion: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("num_classes", self.num_classes, low=2, high=MAX_ROWS)

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None


def fusion_stack(encoder: Encoder, needed_by: str = "classify_bifusion") -> tuple[BertStack, str]:
    """The encoder's BERT stack with fusion layers and its key prefix within the model's state dict
    (``encoder.text_encoder.`` for ALBEF)."""
    stack = encoder.fusion_stack()
    if stack is None or len(stack.fusion_layers) == 0:
        raise ConfigError(f"{needed_by} needs an ALBEF encoder (a BERT text stack with cross-attention "
                          f"fusion layers); {type(encoder).__name__} has none: use encoder.type albef")
    name = next(name for name, module in encoder.named_modules() if module is stack)
    return stack, f"{ENCODER_KEY}{name}."


@register("objective", "classify_bifusion")
class BiFusionClassify(Objective):
    """Image-pair classification with ALBEF's bi-fusion (see the module docstring).

    Modules: ``fusion`` (:class:`~vlkit.nn.bifusion.BiFusionLayers`, initialized as copies of the
    encoder's fusion layers) and ``head`` (``[B, D]`` → ``[B, C]``).
    """

    Config = BiFusionClassifyConfig

    def __init__(self, cfg: BiFusionClassifyConfig, name: str = "classify_bifusion", *, fusion: BiFusionLayers,
                 head: nn.Module, stack_prefix: str, fusion_layer: int) -> None:
        super().__init__(cfg, name)
        self.cfg: BiFusionClassifyConfig = cfg
        self.fusion = fusion
        self.head = head
        self._stack_prefix = stack_prefix
        self._fusion_layer = fusion_layer

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> BiFusionClassify:
        """The pairs start as copies of the encoder's fusion layers (``stack_prefix`` / ``fusion_layer``
        say where ``init_from`` finds them in a checkpoint)."""
        assert isinstance(cfg, BiFusionClassifyConfig)
        stack, prefix = fusion_stack(parts.encoder)
        width = stack.cfg.dim
        return cls(cfg, name, fusion=BiFusionLayers.from_stack(stack),
                   head=parts.head(cfg.head, HeadShape(width, cfg.num_classes, hidden=width)),
                   stack_prefix=prefix, fusion_layer=stack.fusion_layer)

    def heads(self) -> dict[str, nn.Module]:
        return {CLASSIFY_HEAD: self.head}

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {"fusion": self.fusion, "head": self.head} if self.cfg.distill is not None else {}

    def init_aliases(self) -> dict[str, str]:
        """``fusion.layer.{i}.*`` ← ``encoder.text_encoder.encoder.layer.{fusion_layer + i // 2}.*``."""
        return self.fusion.aliases("fusion.", self._stack_prefix, self._fusion_layer)

    def pair_logits(self, image_embeds: Tensor, text: TextEncoding, *, fusion: BiFusionLayers | None = None,
                    head: nn.Module | None = None) -> Tensor:
        """``[B, C]`` logits of texts ``[B, L, D]`` (``text.embeds``, the text layers' output) against
        image tokens ``[2B, M, Dv]`` (first images, then second), with this objective's modules or
        the given ones (the teacher's copies)."""
        if text.embeds is None:
            raise ValueError("bi-fusion needs text.embeds (the text layers' output)")
        texts, images = text.embeds.shape[0], image_embeds.shape[0]
        if images != 2 * texts:
            raise ValueError(f"bi-fusion needs two images per text (all first images, then all second): "
                             f"got {images} images for {texts} texts")
        fusion = fusion if fusion is not None else self.fusion
        hidden = fusion.run(text.embeds, text.mask, fusion.image_kv(image_embeds))
        return (head if head is not None else self.head)(hidden[:, 0])

    def logits(self, encoder: Encoder, images: Tensor | ImageEncoding, input_ids: Tensor,
               attention_mask: Tensor) -> Tensor:
        """``[B, C]`` logits outside a training step (evaluation).

        Args:
            encoder: the online encoder (its image tower and text layers).
            images: ``[2B, 3, H, W]`` (first images, then second) or their :class:`ImageEncoding`.
            input_ids: ``[B, L]``.
            attention_mask: ``[B, L]``.
        """
        image = images if isinstance(images, ImageEncoding) else encoder.encode_image(images)
        if image.embeds is None:
            raise ValueError("bi-fusion needs image.embeds (the image tokens)")
        text = encoder.encode_text(input_ids, attention_mask, unimodal=False)
        return self.pair_logits(image.embeds, text)

    def _teacher_logits(self, step: StepView, alpha: float) -> Tensor | None:
        """The momentum teacher's ``[B, C]`` logits (no grad), or None when distillation is off."""
        if alpha <= 0.0 or not step.teacher_ready:
            return None
        teacher = step.teacher
        image_embeds = teacher.image.embeds
        assert image_embeds is not None
        fusion = teacher.module(f"{self.name}.fusion")
        if not isinstance(fusion, BiFusionLayers):
            raise TypeError(f"the teacher's {self.name}.fusion is a {type(fusion).__name__}, not BiFusionLayers")
        with torch.no_grad():
            return self.pair_logits(image_embeds, teacher.text, fusion=fusion,
                                    head=teacher.module(f"{self.name}.head"))

    def forward(self, step: StepView) -> ObjectiveOutput:
        batch, cfg = step.batch, self.cfg
        image_embeds = step.image.embeds
        if image_embeds is None:
            raise ValueError("bi-fusion needs the image tokens (image.embeds)")
        logits = self.pair_logits(image_embeds, step.text)
        labels = batch.extras[LABELS]
        alpha = cfg.distill.alpha_at(step.teacher_steps) if cfg.distill is not None else 0.0
        targets = mix_targets(F.one_hot(labels, cfg.num_classes).float(), self._teacher_logits(step, alpha), alpha)
        loss = soft_cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == labels).float().mean()
        schedule = {} if cfg.distill is None else {"alpha": alpha}
        return ObjectiveOutput(loss, {"acc": accuracy.detach()}, schedule)
