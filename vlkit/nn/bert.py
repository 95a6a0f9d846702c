"""BERT text and fusion layers, state-dict compatible with ``transformers.BertModel``.

Post-LN layers (``LN(x + dropout(dense(sublayer(x))))``). Layers built with ``cross_attention``
carry an ALBEF-style cross-attention block after self-attention (queries from text, keys and values
from image tokens of width ``encoder_width``). The keys/values of that block depend only on the
image, so :meth:`BertLayer.cross_kv` computes them once and callers reuse them for every text batch
fused with the same images (ITM positives, hard negatives, masked text).

State dict (HF names): ``embeddings.{word_embeddings, position_embeddings, token_type_embeddings,
LayerNorm}``, ``encoder.layer.{i}.attention.{self.{query,key,value}, output.{dense,LayerNorm}}``,
``encoder.layer.{i}.crossattention.*`` (fusion layers), ``encoder.layer.{i}.intermediate.dense``,
``encoder.layer.{i}.output.{dense,LayerNorm}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import MAX_LAYERS, MAX_ROWS, MAX_WIDTH, check_count, check_number
from vlkit.core.weight_source import WeightSource
from vlkit.nn.attention import AttentionLayer, attention
from vlkit.nn.checkpointing import CheckpointedBlock
from vlkit.nn.packing import PackedSeqlens, TextPacking

KV = tuple[Tensor, Tensor]
"""Keys and values of one cross-attention layer, each ``[B, M, H, Dh]``."""


@dataclass(kw_only=True)
class BertConfig:
    """Shape of a BERT stack.

    Attributes:
        vocab_size: WordPiece vocabulary size.
        dim: hidden width ``D``.
        layers: number of layers (text + fusion).
        heads: attention heads.
        intermediate: FFN width.
        max_positions: rows of the absolute position table.
        type_vocab_size: rows of the token-type table.
        eps: LayerNorm epsilon (1e-12 in BERT).
        dropout: hidden dropout.
        attention_dropout: dropout on attention probabilities.
        pad_token_id: id of ``[PAD]`` (its embedding row is zero-initialized).
        init_std: std of the normal initialization (BERT's ``initializer_range``: 0.02, tuned for
            width 768; narrow models need ~0.02·√(768/dim) to keep activations at that scale).
        fused_projections: one matmul for self-attention's query, key and value and one for
            cross-attention's key and value (their weights concatenated at each call; the same
            parameters, checkpoints and results up to rounding) instead of three and two.
        local_mixing: width (odd, ≥ 3) of a depthwise convolution that adds each token's neighbours'
            embeddings to its own before the embedding LayerNorm (:class:`LocalMixing`); 0: off (BERT).
            A vlkit deviation for small models trained from scratch: with absolute positions alone a
            tiny text tower barely learns which noun a colour word belongs to (``research/binding_oracle.py``).
            Its kernel starts random (PyTorch's Conv1d default: a zero kernel learns far more slowly,
            ITM swap 0.64 vs 0.86 there with ``--image grid``); importing BERT weights (``init``) zeroes it, so
            the stack then computes exactly the checkpoint's BERT until it trains.
        init: pre-trained BERT weights to start from, loaded when the encoder is built
            (:mod:`vlkit.weights`): a Hugging Face folder (``config.json`` + ``model.safetensors`` or
            ``pytorch_model.bin``), a weights file, or a hub repository (``bert-base-uncased``, or
            ``hf:<repo>``). Layer ``i`` of the checkpoint initializes layer ``i`` (text layers first,
            then the fusion layers' self-attention and FFN; cross-attention stays new); BERT's MLM head
            goes to the ``mlm`` objective's head. null: random initialization.
    """

    vocab_size: int = 30522
    dim: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    init_std: float = 0.02
    fused_projections: bool = False
    local_mixing: int = 0
    init: WeightSource | None = None

    def __post_init__(self) -> None:
        for key, count in (("dim", self.dim), ("heads", self.heads), ("intermediate", self.intermediate)):
            check_count(key, count, high=MAX_WIDTH)
        for key, count in (("vocab_size", self.vocab_size), ("max_positions", self.max_positions),
                           ("type_vocab_size", self.type_vocab_size)):
            check_count(key, count, high=MAX_ROWS)
        check_count("layers", self.layers, high=MAX_LAYERS)
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}", key="heads")
        check_count("pad_token_id", self.pad_token_id, low=0, high=self.vocab_size - 1)
        check_number("eps", self.eps, 0, low_open=True)
        check_number("dropout", self.dropout, 0, 1, high_open=True)
        check_number("attention_dropout", self.attention_dropout, 0, 1, high_open=True)
        check_number("init_std", self.init_std, 0)
        if self.local_mixing and (self.local_mixing < 3 or self.local_mixing % 2 == 0
                                  or self.local_mixing > self.max_positions):
            raise ConfigError(f"local_mixing must be 0 (off) or an odd width ≥ 3, got {self.local_mixing}",
                              key="local_mixing")


class LocalMixing(nn.Module):
    """Adds a depthwise convolution over neighbouring tokens: ``[B, L, D]`` → ``[B, L, D]``.

    ``x + conv(x ⊙ real)`` with a ``width``-tap kernel per channel (PyTorch's default initialization;
    :meth:`zero_` makes it the identity). Padding positions are zeroed before the convolution, so a
    real token's output does not depend on how much padding follows it.
    """

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, width, padding=width // 2, groups=dim)

    @torch.no_grad()
    def zero_(self) -> None:
        """Make the mixing the identity (done when pre-trained BERT weights are imported)."""
        assert self.conv.bias is not None  # built with the default bias=True
        self.conv.weight.zero_()
        self.conv.bias.zero_()

    def forward(self, x: Tensor, real: Tensor) -> Tensor:
        """``x`` ``[B, L, D]``, ``real`` ``[B, L]`` bool (False at padding) → ``[B, L, D]``."""
        mixed = self.conv((x * real[..., None].to(x.dtype)).transpose(1, 2)).transpose(1, 2)
        return x + mixed


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings → LayerNorm → dropout: ``[B, L]`` ids → ``[B, L, D]``.

    Args:
        cfg: the stack's shape.
        absolute_positions: False drops the position table (VLMo uses relative positions instead).
    """

    def __init__(self, cfg: BertConfig, absolute_positions: bool = True) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.dim) if absolute_positions else None
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.pad_token_id = cfg.pad_token_id
        self.local_mixing = LocalMixing(cfg.dim, cfg.local_mixing) if cfg.local_mixing else None
        self.LayerNorm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self._register_load_state_dict_pre_hook(_drop_position_ids)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """``[B, L]`` ids (and optional ``[B, L]`` token types, default 0) → ``[B, L, D]``."""
        x = self.word_embeddings(input_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            length = input_ids.shape[1]
            if length > self.position_embeddings.num_embeddings:
                raise ValueError(f"text of {length} tokens exceeds max_positions "
                                 f"{self.position_embeddings.num_embeddings}")
            x = x + self.position_embeddings.weight[:length]
        if self.local_mixing is not None:
            x = self.local_mixing(x, input_ids != self.pad_token_id)
        return self.dropout(self.LayerNorm(x))


def _drop_position_ids(state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
    """Older HF checkpoints persist the ``position_ids`` buffer; it is derived, so drop it."""
    state_dict.pop(prefix + "position_ids", None)


class BertProjections(nn.Module):
    """HF ``attention.self``: ``query``, ``key``, ``value`` projections (``key``/``value`` may read
    a different width ``kv_dim``, e.g. image tokens in cross-attention)."""

    def __init__(self, dim: int, kv_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)


class BertResidualLN(nn.Module):
    """HF ``*.output``: ``LN(residual + dropout(dense(x)))``."""

    def __init__(self, in_dim: int, dim: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class BertAttention(AttentionLayer):
    """Self- or cross-attention block with its residual LayerNorm: ``[B, L, D]`` → ``[B, L, D]``."""

    def __init__(self, cfg: BertConfig, kv_dim: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.attn_drop = cfg.attention_dropout
        self.attention_backend = backend
        self.fused = cfg.fused_projections
        # HF calls this sub-module `self`; keeping the name keeps the state-dict layout.
        self.self = BertProjections(cfg.dim, kv_dim or cfg.dim)
        self.output = BertResidualLN(cfg.dim, cfg.dim, cfg.eps, cfg.dropout)
        self.probe: list[Tensor] | None = None
        """When a list, each forward computes attention explicitly and appends its probabilities
        ``[B, H, L, M]`` (part of the autograd graph: Grad-CAM differentiates a score by them)."""

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))

    def kv(self, source: Tensor) -> KV:
        """Keys and values of ``source`` ``[B, M, Dkv]`` → two ``[B, M, H, Dh]`` tensors."""
        if self.fused:
            k, v = self._fused(source, (self.self.key, self.self.value))
            return k, v
        return self._heads(self.self.key(source)), self._heads(self.self.value(source))

    def _fused(self, x: Tensor, layers: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
        """``layers`` applied to ``x`` as one matmul → one ``[B, L, H, Dh]`` tensor per layer."""
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return tuple(self._heads(part) for part in F.linear(x, weight, bias).chunk(len(layers), dim=-1))

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, kv: KV | None = None,
                bias: Tensor | None = None, packed: PackedSeqlens | None = None) -> Tensor:
        """Attend from ``x`` ``[B, L, D]`` to itself, or to precomputed ``kv`` (cross-attention);
        ``bias`` is added to the logits (broadcast to ``[B, H, L, M]``; a causal mask for decoders);
        ``packed``: ``x`` is ``[1, T, D]``, sequences of these lengths laid end to end."""
        if kv is None and self.fused:
            q, k, v = self._fused(x, (self.self.query, self.self.key, self.self.value))
        else:
            k, v = self.kv(x) if kv is None else kv
            q = self._heads(self.self.query(x))
        if self.probe is not None:
            if bias is not None or packed is not None:
                raise ValueError("probed attention takes no bias and no packed text")
            out = self._probed(q, k, v, key_padding_mask)
        else:
            out = attention(q, k, v, key_padding_mask=key_padding_mask, bias=bias, packed=packed,
                            dropout_p=self.attn_drop if self.training else 0.0, backend=self.attention_backend)
        return self.output(out.flatten(-2), x)

    def _probed(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """Explicit attention (no dropout) that records its probabilities in :attr:`probe`."""
        assert self.probe is not None
        scores = torch.einsum("bqhd,bkhd->bhqk", q.float() * self.head_dim ** -0.5, k.float())
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        self.probe.append(probs)
        return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


class BertIntermediate(nn.Module):
    """HF ``intermediate``: ``gelu(dense(x))``, ``[.., D]`` → ``[.., F]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, hidden)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertLayer(CheckpointedBlock):
    """Self-attention → (cross-attention) → FFN, each post-LN: ``[B, L, D]`` → ``[B, L, D]``
    (checkpointable, see :mod:`vlkit.nn.checkpointing`).

    Args:
        cfg: the stack's shape.
        encoder_width: width of the image tokens; ``None`` builds a layer without cross-attention.
        backend: attention backend.
    """

    def __init__(self, cfg: BertConfig, encoder_width: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.attention = BertAttention(cfg, backend=backend)
        self.crossattention = BertAttention(cfg, kv_dim=encoder_width, backend=backend) if encoder_width else None
        self.intermediate = BertIntermediate(cfg.dim, cfg.intermediate)
        self.output = BertResidualLN(cfg.intermediate, cfg.dim, cfg.eps, cfg.dropout)

    @property
    def has_cross_attention(self) -> bool:
        return self.crossattention is not None

    @property
    def own_sharding_unit(self) -> bool:
        """Fusion layers are not: :meth:`cross_kv` runs outside ``forward`` (once per step, shared)."""
        return self.crossattention is None

    def cross_kv(self, image_embeds: Tensor) -> KV:
        """Cross-attention keys/values of ``image_embeds`` ``[B, M, Dv]`` (computed once, reused)."""
        if self.crossattention is None:
            raise RuntimeError("this layer has no cross-attention")
        return self.crossattention.kv(image_embeds)

    def _block_forward(self, x: Tensor, mask: Tensor | None = None, cross_kv: KV | None = None,
                        cross_mask: Tensor | None = None, self_bias: Tensor | None = None,
                        packed: PackedSeqlens | None = None) -> Tensor:
        """One layer.

        Args:
            x: text tokens ``[B, L, D]``.
            mask: bool ``[B, L]``, True for real tokens.
            cross_kv: image keys/values for this layer, each ``[B, M, H, Dh]`` (fusion layers only).
            cross_mask: bool ``[B, M]`` over image tokens (None: all attended, as in ALBEF).
            self_bias: additive self-attention bias ``[1, 1, L, L]`` (a decoder's causal mask).
            packed: ``x`` is ``[1, T, D]``, texts of these lengths end to end (``mask`` None; text layers only).
        """
        x = self.attention(x, key_padding_mask=mask, bias=self_bias, packed=packed)
        if self.crossattention is not None:
            if packed is not None:
                raise ValueError("fusion layers take padded text, not packed")
            if cross_kv is None:
                raise ValueError("a fusion layer needs image keys/values (cross_kv)")
            x = self.crossattention(x, key_padding_mask=cross_mask, kv=cross_kv)
        return self.output(self.intermediate(x), x)


class BertEncoderLayers(nn.Module):
    """HF ``encoder``: holds ``layer``, a list of :class:`BertLayer`."""

    def __init__(self, layers: list[BertLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def layer_at(self, index: int) -> BertLayer:
        """Layer ``index`` of :attr:`layer`, as the :class:`BertLayer` it is (a ``ModuleList`` hands out
        ``nn.Module``)."""
        layer = self.layer[index]
        if not isinstance(layer, BertLayer):
            raise TypeError(f"layer {index} is a {type(layer).__name__}, not a BertLayer")
        return layer


class BertStack(nn.Module):
    """Embeddings and layers of a BERT; layers ``>= fusion_layer`` have cross-attention.

    ``forward`` runs a plain text encoder (all layers must be text layers); fusion encoders call
    :meth:`embed`, :meth:`run` on the text range, then :meth:`run` on the fusion range with image
    keys/values.

    Args:
        cfg: shape.
        fusion_layer: index of the first layer with cross-attention (``cfg.layers``: none).
        encoder_width: width of the image tokens the fusion layers read.
        absolute_positions: keep the absolute position table.
        backend: attention backend.
    """

    def __init__(self, cfg: BertConfig, *, fusion_layer: int | None = None, encoder_width: int | None = None,
                 absolute_positions: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.fusion_layer = cfg.layers if fusion_layer is None else fusion_layer
        if not 0 <= self.fusion_layer <= cfg.layers:
            raise ValueError(f"fusion_layer {self.fusion_layer} outside [0, {cfg.layers}]")
        if self.fusion_layer < cfg.layers and not encoder_width:
            raise ValueError("fusion layers need encoder_width (the image token width)")
        self.attention_backend = backend
        self.embeddings = BertEmbeddings(cfg, absolute_positions=absolute_positions)
        self.encoder = BertEncoderLayers([
            BertLayer(cfg, encoder_width if i >= self.fusion_layer else None, backend=backend)
            for i in range(cfg.layers)
        ])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialization: normal(0, ``init_std``) weights, zero biases, unit LayerNorms, zero [PAD] row."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=self.cfg.init_std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embeddings.word_embeddings.weight[self.cfg.pad_token_id].zero_()

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def layer_at(self, index: int) -> BertLayer:
        """Layer ``index`` of :attr:`layers`, typed."""
        return self.encoder.layer_at(index)

    @property
    def text_layers(self) -> range:
        return range(0, self.fusion_layer)

    @property
    def fusion_layers(self) -> range:
        return range(self.fusion_layer, self.cfg.layers)

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """``[B, L]`` → ``[B, L, D]``."""
        return self.embeddings(input_ids, token_type_ids)

    def image_kv(self, image_embeds: Tensor) -> list[KV]:
        """Keys/values of every fusion layer for ``image_embeds`` ``[B, M, Dv]``."""
        return [self.layer_at(i).cross_kv(image_embeds) for i in self.fusion_layers]

    def run(self, hidden: Tensor, mask: Tensor | None, layers: range,
            image_kv: list[KV] | None = None, image_mask: Tensor | None = None,
            packing: TextPacking | None = None) -> Tensor:
        """Run ``layers`` over ``hidden`` ``[B, L, D]``; ``image_kv`` holds one entry per fusion
        layer in ``layers`` (as returned by :meth:`image_kv`, already indexed to ``B`` rows).

        With ``packing`` (text layers only) the layers run on the real tokens alone, packed into one
        sequence, and the result has zeros at the padding (real positions as without packing)."""
        if packing is not None:
            packed = packing.pack(hidden)
            for i in layers:
                packed = self.layers[i](packed, None, packed=packing.seqlens)
            return packing.unpack(packed)
        for i in layers:
            layer = self.layers[i]
            kv = None
            if layer.has_cross_attention:
                if image_kv is None:
                    raise ValueError(f"layer {i} is a fusion layer and needs image keys/values")
                kv = image_kv[i - self.fusion_layer]
            hidden = layer(hidden, mask, cross_kv=kv, cross_mask=image_mask)
        return hidden

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """Text-only encoding through every layer: ``[B, L]`` → ``[B, L, D]`` (HF ``last_hidden_state``)."""
        if self.fusion_layer < self.cfg.layers:
            raise RuntimeError("this stack has fusion layers; use embed() and run() with image keys/values")
        mask = None if attention_mask is None else attention_mask.bool()
        return self.run(self.embed(input_ids, token_type_ids), mask, range(self.cfg.layers))
