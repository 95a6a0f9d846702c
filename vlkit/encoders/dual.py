"""Dual encoder (ALIGN / CLIP style): an image tower and a BERT text tower, no fusion.

The image tower is vlkit's ViT (``image_backbone: vit``, shaped by ``image``) or any timm model by
name (``image_backbone: efficientnet_b3``; ALIGN uses EfficientNet), whose globally pooled features
feed the projection. Each tower has a linear projection into the shared embedding space.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import timm
from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import MAX_WIDTH, check_count
from vlkit.core.weight_source import WeightSource
from vlkit.encoders.base import Encoder, EncoderConfig, ImageEncoding, TextEncoding, l2_normalize
from vlkit.encoders.sizes import BASE_BERT, BASE_VIT, LARGE_BERT, LARGE_VIT, TINY_BERT, TINY_VIT
from vlkit.nn.bert import BertConfig, BertStack
from vlkit.nn.patch_mask import PatchMask
from vlkit.nn.vit import VisionTransformer, ViTConfig
from vlkit.registry import did_you_mean, register

log = logging.getLogger(__name__)


@functools.cache
def _timm_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


@dataclass(kw_only=True)
class DualConfig(EncoderConfig):
    """Dual encoder.

    Attributes:
        image_backbone: ``vit`` (vlkit's ViT, shaped by ``image``) or a timm model name.
        image: the ViT shape; with a timm backbone only ``image_size`` (the input side) and ``init``
            (the backbone's pre-trained weights: ``timm:<model>`` or a file in timm's layout) are used.
        text: the BERT text tower (every layer a text layer; ``text.init`` loads a BERT).
        embed_dim: width of the shared embedding space.
        proj_bias: bias on the two projections.
    """

    image_backbone: str = "vit"
    image: ViTConfig = field(default_factory=ViTConfig)
    text: BertConfig = field(default_factory=BertConfig)
    embed_dim: int = 512
    proj_bias: bool = True

    supports_fusion: ClassVar[bool] = False

    SIZES: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image": TINY_VIT, "text": {**TINY_BERT, "layers": 2}, "embed_dim": 32},
        "base": {"image": {**BASE_VIT, "image_size": 224}, "text": BASE_BERT, "embed_dim": 512},
        "large": {"image": {**LARGE_VIT, "image_size": 224}, "text": LARGE_BERT, "embed_dim": 768},
    }

    @property
    def input_size(self) -> int:
        return self.image.image_size

    @property
    def max_text_tokens(self) -> int:
        return self.text.max_positions

    def __post_init__(self) -> None:
        check_count("embed_dim", self.embed_dim, high=MAX_WIDTH)
        if self.image_backbone == "vit":
            try:
                self.image.check_patches()
            except ConfigError as err:
                raise err.under("image") from None
        elif self.image_backbone not in _timm_models():
            raise ConfigError(f"`{self.image_backbone}` is neither `vit` nor a timm model"
                              f"{did_you_mean(self.image_backbone, _timm_models())}", key="image_backbone")
        stem = self.image.stem if self.image_backbone == "vit" else "patch"
        if self.image.init is not None and (problem := self.image.init.problem("image", stem)):
            raise ConfigError(problem, key="image.init")
        if self.text.init is not None and (problem := self.text.init.problem("text")):
            raise ConfigError(problem, key="text.init")

    def tower_inits(self) -> dict[str, WeightSource]:
        return {key: init for key, init in (("image", self.image.init), ("text", self.text.init)) if init is not None}

    def without_tower_inits(self) -> DualConfig:
        return dataclasses.replace(self, image=dataclasses.replace(self.image, init=None),
                                   text=dataclasses.replace(self.text, init=None))


class _TimmModel(Protocol):
    """The feature API every timm model has (``timm.create_model`` is typed to return ``nn.Module``)."""

    num_features: int

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


class TimmImageTower(nn.Module):
    """A timm model as an image tower: ``[B, 3, H, W]`` → (tokens ``[B, M, C]``, pooled ``[B, C]``).

    Convolutional feature maps ``[B, C, h, w]`` become ``h·w`` tokens; pooling is the model's own
    global pooling (``forward_head(pre_logits=True)``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def timm_model(self) -> _TimmModel:
        """:attr:`model` seen through timm's feature API."""
        # a timm model, which timm types as nn.Module: its feature API is a convention, not a base class
        return cast(_TimmModel, self.model)

    @property
    def dim(self) -> int:
        return int(self.timm_model.num_features)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.timm_model.forward_features(images)
        pooled = self.timm_model.forward_head(features, pre_logits=True)
        tokens = features.flatten(2).transpose(1, 2) if features.dim() == 4 else features
        return tokens, pooled


class DualEncoder(Encoder):
    """Image tower + text tower + projections; contrastive features only.

    Args:
        image_tower: vlkit ViT (CLS token pooled) or :class:`TimmImageTower`.
        text_tower: BERT without fusion layers ([CLS] pooled).
        vision_proj: ``Linear(D_img, E)``.
        text_proj: ``Linear(D_txt, E)``.
    """

    supports_fusion = False

    def __init__(self, image_tower: VisionTransformer | TimmImageTower, text_tower: BertStack,
                 vision_proj: nn.Linear, text_proj: nn.Linear) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.vision_proj = vision_proj
        self.text_proj = text_proj

    @property
    def embed_dim(self) -> int:
        return self.vision_proj.out_features

    @property
    def width(self) -> int:
        return self.text_tower.cfg.dim

    def word_embeddings(self) -> nn.Embedding:
        return self.text_tower.embeddings.word_embeddings

    def encode_image(self, images: Tensor, *, patch_mask: PatchMask | None = None) -> ImageEncoding:
        """``[B, 3, H, W]`` → tokens ``[B, M, D]`` and feature ``[B, E]`` (no ``patch_mask``: timm towers
        have no masked inputs)."""
        if patch_mask is not None:
            raise ValueError("the dual encoder takes no patch_mask; masked image modelling needs albef or mome")
        if isinstance(self.image_tower, TimmImageTower):
            tokens, pooled = self.image_tower(images)
        else:
            tokens = self.image_tower(images)
            pooled = tokens[:, 0]
        return ImageEncoding(embeds=tokens, feat=l2_normalize(self.vision_proj(pooled)))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, *, unimodal: bool = True,
                    lengths: Sequence[int] | None = None) -> TextEncoding:
        """``[B, L]`` → tokens ``[B, L, D]`` and feature ``[B, E]`` (from [CLS])."""
        mask = attention_mask.bool()
        tokens = self.text_tower(input_ids, mask)
        return TextEncoding(embeds=tokens, mask=mask, feat=l2_normalize(self.text_proj(tokens[:, 0])))

    def set_grad_checkpointing(self, on: bool = True) -> int:
        """Checkpointing of vlkit's blocks (the text tower, a ViT image tower) and, for a timm image
        tower, timm's own (non-reentrant by default; its stages are not counted in the returned number)."""
        if isinstance(self.image_tower, TimmImageTower):
            try:
                self.image_tower.timm_model.set_grad_checkpointing(on)
            except (AttributeError, AssertionError, NotImplementedError):
                if on:
                    log.warning("timm model %s does not support gradient checkpointing; its image tower runs without",
                                type(self.image_tower.model).__name__)
        return super().set_grad_checkpointing(on)

    def parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        return {"vision": [self.image_tower], "text": [self.text_tower],
                "projections": [self.vision_proj, self.text_proj]}


def build_image_tower(cfg: DualConfig) -> VisionTransformer | TimmImageTower:
    """vlkit's ViT, or the named timm model without its classifier (random init)."""
    if cfg.image_backbone == "vit":
        return VisionTransformer(cfg.image, backend=cfg.attention)
    try:
        model = timm.create_model(cfg.image_backbone, pretrained=False, num_classes=0, img_size=cfg.image.image_size)
    except TypeError:  # convolutional models take any input size and no img_size argument
        model = timm.create_model(cfg.image_backbone, pretrained=False, num_classes=0)
    return TimmImageTower(model)


@register("encoder", "dual", config=DualConfig)
def build_dual(cfg: DualConfig) -> DualEncoder:
    """Dual encoder (ALIGN / CLIP): image tower (ViT or any timm model) + BERT, no fusion."""
    image_tower = build_image_tower(cfg)
    image_dim = cfg.image.dim if isinstance(image_tower, VisionTransformer) else image_tower.dim
    return DualEncoder(
        image_tower=image_tower,
        text_tower=BertStack(cfg.text, backend=cfg.attention),
        vision_proj=nn.Linear(image_dim, cfg.embed_dim, bias=cfg.proj_bias),
        text_proj=nn.Linear(cfg.text.dim, cfg.embed_dim, bias=cfg.proj_bias),
    )
