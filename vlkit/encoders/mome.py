"""VLMo's MoME encoder: one multiway transformer for images, text and image-text pairs.

Every block shares its self-attention and routes tokens to a feed-forward expert by modality
(:mod:`vlkit.nn.multiway`). ``encode_image`` / ``encode_text`` run all blocks with the image / text
experts and, from ``vl_start`` on, a second *VL path* through the vision-language experts (VLMo's
``infer_image`` / ``infer_text``): ``feat`` and ``vl_feat`` are the two contrastive features.
``fuse`` runs the blocks over ``[text, image]`` token embeddings (VLMo's ``infer``): text and image
experts below ``vl_start``, the VL expert above.

Unlike VLMo, fused sequences are routed by segment lengths read from tensor shapes, not split at a
constant ``max_text_len``, so text needs no padding to a fixed length: a batch padded to its own
longest caption gives the same outputs on real tokens.

Module names follow VLMo's checkpoints (``transformer.*``, ``relative_position_bias_table``,
``text_embeddings.*``, ``token_type_embeddings``, ``pooler.dense``, ``itc_{text,image}_proj.fc``,
``itc_vl_{text,image}_proj.fc``); the index matrices VLMo stores as buffers are rebuilt on demand
(cached per layout and device, not in the state dict) and dropped on load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_MLP_RATIO, MAX_ROWS, MAX_WIDTH, check_count, check_number
from vlkit.core.weight_source import WeightSource
from vlkit.encoders.base import Encoder, EncoderConfig, FusedEncoding, ImageEncoding, TextEncoding, l2_normalize
from vlkit.nn.bert import BertConfig, BertEmbeddings
from vlkit.nn.multiway import MultiwayTransformer, Route
from vlkit.nn.patch_mask import PatchMask
from vlkit.nn.relative_position import (
    fused_relative_position_index,
    image_relative_position_index,
    num_buckets,
    relative_position_bias,
    text_relative_position_index,
)
from vlkit.nn.stem import Stem, stem_problem
from vlkit.registry import register

_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 4, "heads": 4, "vl_start": 2},
    "base": {"image_size": 224, "patch_size": 16, "dim": 768, "depth": 12, "heads": 12, "vl_start": 10},
    "large": {"image_size": 224, "patch_size": 16, "dim": 1024, "depth": 24, "heads": 16, "vl_start": 21},
    "base_plus": {"image_size": 224, "patch_size": 16, "dim": 544, "depth": 24, "heads": 16, "vl_start": 21},
}
_RELATIVE = {"position": "relative", "layer_scale": 0.1}
_ABSOLUTE = {"position": "absolute", "layer_scale": None}


@dataclass(kw_only=True)
class MomeConfig(EncoderConfig):
    """VLMo's mixture-of-modality-experts encoder.

    Attributes:
        image_size: input side in pixels (VLMo pre-trains at 224).
        patch_size: patch side in pixels.
        dim: width ``D``.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: FFN width / ``D``.
        vl_start: index of the first block with a vision-language expert (VLMo base: 10, large and
            base_plus: 21); ``depth`` builds none (VLMo's text-only stage), and then there is no VL
            path (``vl_feat`` is None).
        layer_scale: initial value of the per-channel layer scales ``γ₁, γ₂`` (VLMo: 0.1); None
            for no layer scale (base_plus).
        position: ``relative`` (base, large: one bias table for all layers, BEiT buckets for image
            patches, 1-D distances for text) or ``absolute`` (base_plus: ``pos_embed`` for images,
            a BERT position table of ``max_text_len`` rows for text).
        max_text_len: the tokenizer's truncation length (VLMo: 40). With absolute positions it is
            also the most text tokens the encoder accepts; with relative ones the limit is
            ``max_text_len_of_initckpt``. Batches need not be padded to it.
        max_text_len_of_initckpt: ``T`` in VLMo's text buckets (196): distances up to ``T - 2``.
        vocab_size: WordPiece vocabulary.
        type_vocab_size: rows of the outer token-type table (0: text, 1: image; NLVR2 adds 2).
        embed_dim: width ``E`` of the contrastive features (VLMo: ``E = D``).
        drop_path: stochastic depth of the last block, linear from 0 (VLMo pre-training: 0.1);
            also the dropout after the text embeddings, as in VLMo.
        eps: LayerNorm epsilon of the transformer (the text embeddings use BERT's 1e-12).
        init_std: std of the weight initialization (VLMo: 0.02, tuned for width 768; narrow models
            need ~0.02·√(768/dim) to keep activations at that scale).
        stem: patch embedding, ``patch`` (VLMo) or ``conv`` (for training small models from scratch;
            see :mod:`vlkit.nn.stem`).
        experts: ``modality`` (VLMo: text, image and VL feed-forward experts) or ``shared`` (one FFN
            per block for every token, a standard transformer, for ablations; needs ``vl_start = depth``).
        init: BEiT or ViT weights to start the transformer from, loaded when the encoder is built
            (VLMo's stage 1; :mod:`vlkit.weights.beit_mome`): ``timm:<model>``
            (``timm:beit_base_patch16_224.in22k_ft_in22k_in1k``) or a local file / folder in timm's or
            BEiT's layout. Attention, layer scales and BEiT's relative position tables are shared by all
            experts; the FFN goes to the experts in ``init_experts``. null: random initialization.
        init_experts: the experts that receive the checkpoint's FFN: ``image`` (VLMo), and optionally
            ``text`` and ``vl`` (the others keep their random initialization).
    """

    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    vl_start: int = 10
    layer_scale: float | None = 0.1
    position: Literal["relative", "absolute"] = "relative"
    max_text_len: int = 40
    max_text_len_of_initckpt: int = 196
    vocab_size: int = 30522
    type_vocab_size: int = 2
    embed_dim: int = 768
    drop_path: float = 0.1
    eps: float = 1e-6
    init_std: float = 0.02
    stem: Stem = "patch"
    experts: Literal["modality", "shared"] = "modality"
    init: WeightSource | None = None
    init_experts: tuple[Literal["image", "text", "vl"], ...] = ("image",)

    SIZES: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**_SHAPES["tiny"], **_RELATIVE, "embed_dim": 64, "drop_path": 0.0, "init_std": 0.07},
        "base": {**_SHAPES["base"], **_RELATIVE, "embed_dim": 768},
        "large": {**_SHAPES["large"], **_RELATIVE, "embed_dim": 1024},
        "base_plus": {**_SHAPES["base_plus"], **_ABSOLUTE, "embed_dim": 544},
    }

    def __post_init__(self) -> None:
        for key, value, high in (("image_size", self.image_size, MAX_IMAGE_SIDE),
                                 ("patch_size", self.patch_size, MAX_IMAGE_SIDE), ("dim", self.dim, MAX_WIDTH),
                                 ("depth", self.depth, MAX_LAYERS), ("heads", self.heads, MAX_WIDTH),
                                 ("max_text_len", self.max_text_len, MAX_ROWS),
                                 ("max_text_len_of_initckpt", self.max_text_len_of_initckpt, MAX_ROWS),
                                 ("vocab_size", self.vocab_size, MAX_ROWS), ("embed_dim", self.embed_dim, MAX_WIDTH)):
            check_count(key, value, high=high)
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by {self.heads} heads", key="heads")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}",
                              key="image_size")
        if problem := stem_problem(self.stem, self.patch_size):
            raise ConfigError(problem, key="stem")
        if not 0 <= self.vl_start <= self.depth:
            raise ConfigError(f"must be in [0, {self.depth}] (depth = {self.depth}; depth means no VL experts)",
                              key="vl_start")
        if self.experts not in ("modality", "shared"):
            raise ConfigError(f"is `{self.experts}`, not one of modality, shared", key="experts")
        if self.experts == "shared" and self.vl_start != self.depth:
            raise ConfigError(f"a shared FFN has no vision-language experts; set vl_start to depth ({self.depth})",
                              key="experts")
        if self.position not in ("relative", "absolute"):
            raise ConfigError(f"is `{self.position}`, not one of relative, absolute", key="position")
        if self.position == "relative" and self.max_text_len > self.max_text_len_of_initckpt:
            raise ConfigError(f"relative text positions cover at most max_text_len_of_initckpt = "
                              f"{self.max_text_len_of_initckpt} tokens, got {self.max_text_len}", key="max_text_len")
        if self.type_vocab_size < 2:
            raise ConfigError("needs rows for text (0) and image (1) tokens", key="type_vocab_size")
        check_count("type_vocab_size", self.type_vocab_size, low=2, high=MAX_ROWS)
        check_number("mlp_ratio", self.mlp_ratio, 0, MAX_MLP_RATIO, low_open=True)
        check_number("drop_path", self.drop_path, 0.0, 1.0, high_open=True)
        check_number("eps", self.eps, 0, low_open=True)
        check_number("init_std", self.init_std, 0)
        if self.layer_scale is not None:
            check_number("layer_scale", self.layer_scale)
        if self.init is not None and (problem := self.init.problem("image", self.stem)):
            raise ConfigError(problem, key="init")
        if not self.init_experts or len(set(self.init_experts)) != len(self.init_experts):
            raise ConfigError(f"names each expert once and at least one, got {list(self.init_experts)}",
                              key="init_experts")

    def tower_inits(self) -> dict[str, WeightSource]:
        return {} if self.init is None else {"": self.init}

    def without_tower_inits(self) -> MomeConfig:
        return dataclasses.replace(self, init=None)

    @property
    def grid(self) -> int:
        """Patches per image side ``W``."""
        return self.image_size // self.patch_size

    @property
    def has_vl_path(self) -> bool:
        return self.vl_start < self.depth

    @property
    def input_size(self) -> int:
        return self.image_size

    @property
    def max_text_tokens(self) -> int:
        return self.max_text_len if self.position == "absolute" else self.max_text_len_of_initckpt


class Pooler(nn.Module):
    """VLMo's pooler: ``tanh(dense(x[:, 0]))``, ``[B, N, D]`` → ``[B, D]`` (what its ITM head reads)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class ITCProjection(nn.Module):
    """VLMo's ``ITCHead``: ``fc = Linear(D, E, bias=False)``, ``[.., D]`` → ``[.., E]``."""

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


_DERIVED_KEYS = ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index")
"""Index buffers VLMo checkpoints carry; vlkit rebuilds them per layout."""


class MomeEncoder(Encoder):
    """VLMo's multiway transformer with its embeddings, pooler and contrastive projections.

    Args:
        cfg: the encoder's shape (:class:`MomeConfig`); ``cfg.attention`` picks the attention kernel.
    """

    supports_fusion = True

    def __init__(self, cfg: MomeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        relative = cfg.position == "relative"
        self.transformer = MultiwayTransformer(
            image_size=cfg.image_size, patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio, vl_start=cfg.vl_start, layer_scale=cfg.layer_scale,
            absolute_positions=not relative, eps=cfg.eps, drop_path=cfg.drop_path, init_std=cfg.init_std,
            stem=cfg.stem, backend=cfg.attention, shared_ffn=cfg.experts == "shared")
        self.relative_position_bias_table: nn.Parameter | None = None
        if relative:
            rows = num_buckets(cfg.grid, cfg.max_text_len_of_initckpt)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, cfg.heads * cfg.depth))
        text = BertConfig(vocab_size=cfg.vocab_size, dim=cfg.dim, layers=cfg.depth, heads=cfg.heads,
                          intermediate=int(cfg.dim * cfg.mlp_ratio), max_positions=cfg.max_text_len,
                          dropout=cfg.drop_path, attention_dropout=0.0, init_std=cfg.init_std)
        self.text_embeddings = BertEmbeddings(text, absolute_positions=not relative)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.pooler = Pooler(cfg.dim)
        self.itc_text_proj = ITCProjection(cfg.dim, cfg.embed_dim)
        self.itc_image_proj = ITCProjection(cfg.dim, cfg.embed_dim)
        self.itc_vl_text_proj: ITCProjection | None = None
        self.itc_vl_image_proj: ITCProjection | None = None
        if cfg.vl_start < cfg.depth:
            self.itc_vl_text_proj = ITCProjection(cfg.dim, cfg.embed_dim)
            self.itc_vl_image_proj = ITCProjection(cfg.dim, cfg.embed_dim)
        self._index_cache: dict[tuple[str, int, torch.device], Tensor] = {}
        self._register_load_state_dict_pre_hook(self._drop_derived_keys)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VLMo's initialization outside the transformer: normal(0, ``init_std``) for embeddings and heads,
        zero biases, unit LayerNorms, a zero bias table; the [PAD] word row is zeroed as in BERT."""
        if self.relative_position_bias_table is not None:
            nn.init.zeros_(self.relative_position_bias_table)
        heads = [self.pooler, self.itc_text_proj, self.itc_image_proj, self.itc_vl_text_proj, self.itc_vl_image_proj]
        for part in (self.text_embeddings, self.token_type_embeddings, *heads):
            for module in () if part is None else part.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, std=self.cfg.init_std)
                    if isinstance(module, nn.Linear) and module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        words = self.text_embeddings.word_embeddings
        if words.padding_idx is not None:
            with torch.no_grad():
                words.weight[words.padding_idx].zero_()

    # ------------------------------------------------------------------ Encoder interface
    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def width(self) -> int:
        return self.cfg.dim

    def word_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    supports_patch_mask = True

    def image_geometry(self) -> tuple[int, int, int]:
        return self.cfg.patch_size, self.cfg.grid ** 2, self.cfg.dim

    def encode_image(self, images: Tensor, *, patch_mask: PatchMask | None = None) -> ImageEncoding:
        """Image experts in every block, plus the VL path.

        Args:
            images: ``[B, 3, H, W]`` at ``cfg.image_size``.
            patch_mask: patches to hide behind a mask token (masked image modelling).

        Returns:
            ``embeds`` ``[B, 1+P, D]`` (final norm), ``feat`` ``[B, E]``, ``vl_feat`` ``[B, E]`` (None
            without VL experts) and ``inputs`` ``[B, 1+P, D]`` (patches + [CLS] (+ positions), without
            the token type) for :meth:`fuse`.
        """
        inputs = self.transformer.embed(images, patch_mask)
        x = inputs + self.token_type_embeddings.weight[1]
        hidden, vl = self._unimodal(x, "image", None, self._biases("image", 0, x.device))
        feat = l2_normalize(self.itc_image_proj(hidden[:, 0]))
        vl_feat = None
        if vl is not None and self.itc_vl_image_proj is not None:
            vl_feat = l2_normalize(self.itc_vl_image_proj(vl[:, 0]))
        return ImageEncoding(embeds=hidden, feat=feat, vl_feat=vl_feat, inputs=inputs)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, *, unimodal: bool = True,
                    lengths: Sequence[int] | None = None) -> TextEncoding:
        """Text experts in every block, plus the VL path.

        Args:
            input_ids: ``[B, L]`` token ids, padded to any length ``L`` (``≤ max_text_len`` with absolute
                positions, ``≤ max_text_len_of_initckpt`` with relative ones).
            attention_mask: ``[B, L]``, nonzero for real tokens.
            unimodal: False computes only ``inputs`` and ``mask`` (``embeds`` None): text that is only
                ever fused, e.g. masked text for MLM.

        Returns:
            ``embeds`` ``[B, L, D]``, ``mask`` bool ``[B, L]``, ``feat``/``vl_feat`` ``[B, E]``, ``inputs``
            ``[B, L, D]`` (text embeddings without the outer token type).
        """
        mask = attention_mask.bool()
        inputs = self.embed_text(input_ids)
        if not unimodal:
            return TextEncoding(embeds=None, mask=mask, inputs=inputs)
        x = inputs + self.token_type_embeddings.weight[0]
        hidden, vl = self._unimodal(x, "text", mask, self._biases("text", x.shape[1], x.device))
        feat = l2_normalize(self.itc_text_proj(hidden[:, 0]))
        vl_feat = None
        if vl is not None and self.itc_vl_text_proj is not None:
            vl_feat = l2_normalize(self.itc_vl_text_proj(vl[:, 0]))
        return TextEncoding(embeds=hidden, mask=mask, feat=feat, vl_feat=vl_feat, inputs=inputs)

    def fuse(self, image: ImageEncoding, text: TextEncoding, *, image_index: Tensor | None = None,
             text_index: Tensor | None = None, image_kv: Any = None, image_token_type: int = 1) -> FusedEncoding:
        """All blocks over ``[text, image]`` pairs (VLMo's ``infer``).

        Args:
            image: from :meth:`encode_image` (``inputs`` is used).
            text: from :meth:`encode_text` (``inputs`` and ``mask`` are used).
            image_index: ``[B']`` rows of ``image`` (None: all, in order).
            text_index: ``[B']`` rows of ``text`` (None: all, in order).
            image_kv: ignored (MoME has no image-only keys/values to share between fusion passes).
            image_token_type: row of the token-type table added to image tokens (NLVR2's second
                image uses 2).

        Returns:
            ``text`` ``[B', L, D]``, ``cls`` ``[B', D]`` (pooler over the first token) and ``image``
            ``[B', 1+P, D]``, all after the final norm.
        """
        if image.inputs is None or text.inputs is None:
            raise ValueError("fuse needs image.inputs and text.inputs (from encode_image / encode_text)")
        if not 0 <= image_token_type < self.token_type_embeddings.num_embeddings:
            raise ValueError(f"image_token_type {image_token_type} outside the token-type table "
                             f"({self.token_type_embeddings.num_embeddings} rows)")
        img = image.inputs if image_index is None else image.inputs[image_index]
        txt, mask = text.inputs, text.mask
        if text_index is not None:
            txt, mask = txt[text_index], mask[text_index]
        if img.shape[0] != txt.shape[0]:
            raise ValueError(f"fuse pairs {img.shape[0]} images with {txt.shape[0]} texts; "
                             "pass image_index/text_index of equal length")
        text_len, image_len = txt.shape[1], img.shape[1]
        types = self.token_type_embeddings.weight
        x = torch.cat((txt + types[0], img + types[image_token_type]), dim=1)
        key_padding_mask = torch.cat((mask, mask.new_ones(mask.shape[0], image_len)), dim=1)
        biases = self._biases("fused", text_len, x.device)
        for i in range(self.transformer.depth):
            block = self.transformer.block_at(i)
            x = block(x, block.fusion_routes(text_len, image_len), key_padding_mask=key_padding_mask,
                      bias=_layer(biases, i))
        x = self.transformer.norm(x)
        return FusedEncoding(text=x[:, :text_len], cls=self.pooler(x), image=x[:, text_len:])

    def parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """Every parameter exactly once, grouped: embeddings, shared (attention, layer scales,
        relative-position table, final norm), each modality's experts, and the heads."""
        t = self.transformer
        blocks = [t.block_at(i) for i in range(t.depth)]
        gammas = [g for b in blocks for g in (b.gamma_1, b.gamma_2) if g is not None]
        return {
            "embeddings (patch, text, token type)": [
                t.patch_embed, t.cls_token, *([] if t.pos_embed is None else [t.pos_embed]),
                self.text_embeddings, self.token_type_embeddings],
            "shared (attention, layer scale, rel-pos table, final norm)": [
                *(m for b in blocks for m in (b.norm1, b.attn)), *gammas,
                *([] if self.relative_position_bias_table is None else [self.relative_position_bias_table]), t.norm],
            "image experts": [m for b in blocks for m in (b.norm2_imag, b.mlp_imag) if m is not None],
            "text experts": [m for b in blocks for m in (b.norm2_text, b.mlp_text)],
            "vl experts": [m for b in blocks for m in (b.norm2_vl, b.mlp_vl) if m is not None],
            "heads (pooler, itc projections)": [
                m for m in (self.pooler, self.itc_text_proj, self.itc_image_proj, self.itc_vl_text_proj,
                            self.itc_vl_image_proj) if m is not None],
        }

    # ------------------------------------------------------------------ pieces
    def embed_text(self, input_ids: Tensor) -> Tensor:
        """``[B, L]`` ids → ``[B, L, D]`` text embeddings (word, BERT token type 0, absolute positions if
        any, LayerNorm, dropout), without the outer token type."""
        length = input_ids.shape[1]
        if self.cfg.position == "absolute" and length > self.cfg.max_text_len:
            raise ValueError(f"text of {length} tokens is longer than max_text_len = {self.cfg.max_text_len}, "
                             "the rows of the absolute text position table; truncate it in the tokenizer")
        if self.cfg.position == "relative" and length > self.cfg.max_text_len_of_initckpt:
            raise ValueError(f"text of {length} tokens is longer than max_text_len_of_initckpt = "
                             f"{self.cfg.max_text_len_of_initckpt}, the span of the relative text positions")
        return self.text_embeddings(input_ids)

    def relative_position_index(self, layout: Literal["image", "text", "fused"], text_len: int,
                                device: torch.device) -> Tensor:
        """Bucket index ``[N, N]`` of a layout, built once per (layout, text length, device)."""
        key = (layout, text_len, device)
        index = self._index_cache.get(key)
        if index is None:
            grid, span = self.cfg.grid, self.cfg.max_text_len_of_initckpt
            if layout == "image":
                index = image_relative_position_index(grid, device=device)
            elif layout == "text":
                index = text_relative_position_index(text_len, grid, span, device=device)
            else:
                index = fused_relative_position_index(text_len, grid, span, device=device)
            self._index_cache[key] = index
        return index

    def _biases(self, layout: Literal["image", "text", "fused"], text_len: int, device: torch.device) -> Tensor | None:
        """Every block's relative-position bias ``[depth, H, N, N]`` (None with absolute positions)."""
        table = self.relative_position_bias_table
        if table is None:
            return None
        return relative_position_bias(table, self.relative_position_index(layout, text_len, device), self.cfg.depth)

    def _unimodal(self, x: Tensor, expert: Literal["image", "text"], mask: Tensor | None,
                  biases: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """All blocks with ``expert``, and the VL path: the hidden state entering block ``vl_start``
        run again through blocks ``vl_start..`` with the VL expert. Both outputs pass the final norm.

        Returns:
            ``[B, N, D]`` and the VL path's ``[B, N, D]`` (None without VL experts).
        """
        blocks, vl_start = self.transformer.blocks, self.cfg.vl_start
        routes: list[Route] = [(expert, x.shape[1])]
        branch = x if vl_start == 0 else None
        for i, block in enumerate(blocks):
            x = block(x, routes, key_padding_mask=mask, bias=_layer(biases, i))
            if i + 1 == vl_start:
                branch = x
        if branch is None or vl_start >= len(blocks):
            return self.transformer.norm(x), None
        vl_routes: list[Route] = [("vl", x.shape[1])]
        for i in range(vl_start, len(blocks)):
            branch = blocks[i](branch, vl_routes, key_padding_mask=mask, bias=_layer(biases, i))
        return self.transformer.norm(x), self.transformer.norm(branch)

    def _drop_derived_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """VLMo checkpoints persist their index matrices (vlkit rebuilds them per layout) and, with
        relative positions, an unused BERT position table (HF builds it regardless): drop them on load."""
        for key in _DERIVED_KEYS:
            state_dict.pop(prefix + key, None)
        if self.relative_position_bias_table is not None:
            state_dict.pop(prefix + "text_embeddings.position_embeddings.weight", None)


def _layer(biases: Tensor | None, i: int) -> Tensor | None:
    """Block ``i``'s bias as ``[1, H, N, N]``."""
    return None if biases is None else biases[i].unsqueeze(0)


@register("encoder", "mome", config=MomeConfig)
def build_mome(cfg: MomeConfig) -> MomeEncoder:
    """VLMo: a multiway transformer with image, text and vision-language experts."""
    return MomeEncoder(cfg)
