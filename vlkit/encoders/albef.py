"""ALBEF's encoder: a ViT, BERT text layers, and BERT fusion layers with cross-attention.

``encode_image`` runs the ViT; ``encode_text`` runs the text layers ``[0, fusion_layer)``; ``fuse``
runs the fusion layers ``[fusion_layer, L)`` on text tokens against image tokens. The keys and
values of every fusion layer's cross-attention depend only on the images, so :meth:`image_kv`
computes them once per step and every fusion pass over those images (ITM positives, hard negatives,
masked text) indexes into them instead of projecting the image tokens again.

Module names follow the official code (``visual_encoder``, ``text_encoder``, ``vision_proj``,
``text_proj``), with ``text_encoder`` in the HF ``BertModel`` layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import MAX_WIDTH, check_count
from vlkit.core.weight_source import WeightSource
from vlkit.encoders.base import (
    Encoder,
    EncoderConfig,
    FusedEncoding,
    ImageEncoding,
    TextEncoding,
    l2_normalize,
)
from vlkit.encoders.sizes import BASE_BERT, BASE_VIT, LARGE_BERT, LARGE_VIT, TINY_BERT, TINY_VIT
from vlkit.nn.bert import KV, BertConfig, BertStack
from vlkit.nn.packing import TextPacking
from vlkit.nn.patch_mask import PatchMask
from vlkit.nn.vit import VisionTransformer, ViTConfig
from vlkit.registry import register


@dataclass(kw_only=True)
class AlbefConfig(EncoderConfig):
    """ALBEF encoder.

    Attributes:
        image: the ViT (ALBEF: DeiT-B/16 at 256 px; ``image.init: timm:deit_base_patch16_224``).
        text: the BERT stack, text and fusion layers together (ALBEF: BERT-base, 12 layers;
            ``text.init: bert-base-uncased``).
        fusion_layer: index of the first text layer with cross-attention (ALBEF: 6).
        embed_dim: width of the contrastive features (ALBEF: 256).
        pack_text: run the text layers on the real tokens only, packed into one sequence with a
            block-diagonal attention mask (:mod:`vlkit.nn.packing`; the batch's host-side token
            counts say where they are). Same results at the real positions; fewer FLOPs in the
            text layers. Meant for the xformers backend (``BlockDiagonalMask``); sdpa and math build
            an explicit ``[T, T]`` mask, exact but slower, for tests. Not with ``train.compile``.
    """

    image: ViTConfig = field(default_factory=ViTConfig)
    text: BertConfig = field(default_factory=BertConfig)
    fusion_layer: int = 6
    embed_dim: int = 256
    pack_text: bool = False

    SIZES: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"image": TINY_VIT, "text": TINY_BERT, "fusion_layer": 2, "embed_dim": 32},
        "base": {"image": BASE_VIT, "text": BASE_BERT, "fusion_layer": 6, "embed_dim": 256},
        "large": {"image": LARGE_VIT, "text": LARGE_BERT, "fusion_layer": 12, "embed_dim": 256},
    }

    @property
    def input_size(self) -> int:
        return self.image.image_size

    @property
    def max_text_tokens(self) -> int:
        return self.text.max_positions

    @property
    def packs_text(self) -> bool:
        return self.pack_text

    def __post_init__(self) -> None:
        check_count("embed_dim", self.embed_dim, high=MAX_WIDTH)
        try:
            self.image.check_patches()
        except ConfigError as err:
            raise err.under("image") from None
        if not 0 < self.fusion_layer < self.text.layers:
            raise ConfigError(f"must be in [1, {self.text.layers - 1}] (text.layers = {self.text.layers}) "
                              "so that there are text and fusion layers", key="fusion_layer")
        if self.image.init is not None and (problem := self.image.init.problem("image", self.image.stem)):
            raise ConfigError(problem, key="image.init")
        if self.text.init is not None and (problem := self.text.init.problem("text")):
            raise ConfigError(problem, key="text.init")

    def tower_inits(self) -> dict[str, WeightSource]:
        return {key: init for key, init in (("image", self.image.init), ("text", self.text.init)) if init is not None}

    def without_tower_inits(self) -> AlbefConfig:
        return dataclasses.replace(self, image=dataclasses.replace(self.image, init=None),
                                   text=dataclasses.replace(self.text, init=None))


class AlbefEncoder(Encoder):
    """ViT + BERT text layers + BERT fusion layers (ALBEF).

    Args:
        visual_encoder: the image tower.
        text_encoder: BERT with cross-attention from ``fusion_layer`` on.
        vision_proj: ``Linear(D_img, E)`` for the image contrastive feature.
        text_proj: ``Linear(D_txt, E)`` for the text contrastive feature.
    """

    supports_fusion = True

    def __init__(self, visual_encoder: VisionTransformer, text_encoder: BertStack,
                 vision_proj: nn.Linear, text_proj: nn.Linear, pack_text: bool = False) -> None:
        super().__init__()
        self.pack_text = pack_text
        self.visual_encoder = visual_encoder
        self.text_encoder = text_encoder
        self.vision_proj = vision_proj
        self.text_proj = text_proj

    @property
    def embed_dim(self) -> int:
        return self.vision_proj.out_features

    @property
    def width(self) -> int:
        return self.text_encoder.cfg.dim

    def word_embeddings(self) -> nn.Embedding:
        return self.text_encoder.embeddings.word_embeddings

    supports_patch_mask = True

    def image_geometry(self) -> tuple[int, int, int]:
        cfg = self.visual_encoder.cfg
        return cfg.patch_size, cfg.grid ** 2, cfg.dim

    def encode_image(self, images: Tensor, *, patch_mask: PatchMask | None = None) -> ImageEncoding:
        """``[B, 3, H, W]`` → tokens ``[B, 1+P, D]`` and feature ``[B, E]``."""
        embeds = self.visual_encoder(images, patch_mask)
        return ImageEncoding(embeds=embeds, feat=l2_normalize(self.vision_proj(embeds[:, 0])))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, *, unimodal: bool = True,
                    lengths: Sequence[int] | None = None) -> TextEncoding:
        """``[B, L]`` → text-layer tokens ``[B, L, D]`` and (``unimodal``) feature ``[B, E]``; packed
        (see ``pack_text``) when on and the host-side ``lengths`` are given (zeros at the padding)."""
        mask = attention_mask.bool()
        stack = self.text_encoder
        packing = None
        if self.pack_text and lengths is not None:
            packing = TextPacking.from_lengths(lengths, input_ids.shape[1], input_ids.device)
        embeds = stack.run(stack.embed(input_ids), None if packing else mask, stack.text_layers, packing=packing)
        feat = l2_normalize(self.text_proj(embeds[:, 0])) if unimodal else None
        return TextEncoding(embeds=embeds, mask=mask, feat=feat)

    def fusion_stack(self) -> BertStack:
        """The BERT stack: text layers, then the cross-attention fusion layers."""
        return self.text_encoder

    def image_kv(self, image: ImageEncoding) -> list[KV]:
        """Cross-attention keys/values of every fusion layer, each ``[B, M, H, Dh]``."""
        if image.embeds is None:
            raise ValueError("image_kv needs image.embeds")
        return self.text_encoder.image_kv(image.embeds)

    def fuse(self, image: ImageEncoding, text: TextEncoding, *, image_index: Tensor | None = None,
             text_index: Tensor | None = None, image_kv: list[KV] | None = None) -> FusedEncoding:
        """Fusion layers over pairs; returns fused text tokens ``[B', L, D]`` and their [CLS]."""
        if text.embeds is None:
            raise ValueError("fuse needs text.embeds (the text-layer output)")
        kv = image_kv if image_kv is not None else self.image_kv(image)
        if image_index is not None:
            kv = [(k[image_index], v[image_index]) for k, v in kv]
        hidden, mask = text.embeds, text.mask
        if text_index is not None:
            hidden, mask = hidden[text_index], mask[text_index]
        if hidden.shape[0] != kv[0][0].shape[0]:
            raise ValueError(f"fuse pairs {kv[0][0].shape[0]} images with {hidden.shape[0]} texts; "
                             "pass image_index/text_index of equal length")
        out = self.text_encoder.run(hidden, mask, self.text_encoder.fusion_layers, kv)
        return FusedEncoding(text=out, cls=out[:, 0])

    def parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        layers = self.text_encoder.layers
        return {
            "vision": [self.visual_encoder],
            "text": [self.text_encoder.embeddings, *(layers[i] for i in self.text_encoder.text_layers)],
            "fusion": [layers[i] for i in self.text_encoder.fusion_layers],
            "projections": [self.vision_proj, self.text_proj],
        }


@register("encoder", "albef", config=AlbefConfig)
def build_albef(cfg: AlbefConfig) -> AlbefEncoder:
    """ALBEF: ViT + BERT text layers + cross-attention fusion layers."""
    return AlbefEncoder(
        visual_encoder=VisionTransformer(cfg.image, backend=cfg.attention),
        text_encoder=BertStack(cfg.text, fusion_layer=cfg.fusion_layer, encoder_width=cfg.image.dim,
                               backend=cfg.attention),
        vision_proj=nn.Linear(cfg.image.dim, cfg.embed_dim),
        text_proj=nn.Linear(cfg.text.dim, cfg.embed_dim),
        pack_text=cfg.pack_text,
    )
