"""FLOPs per training sample: the official step's reference formula and what vlkit executes.

The reference (``../shared/reference/performance_notes.md`` §1) counts matmul FLOPs (a multiply-add is
2 FLOPs) of the official code's passes at a recipe's widths and depths, backward = 2 × forward for
trainable passes, the momentum teacher forward-only:

- ALBEF: ``4·ViT + 8·T + 13·F + 4·H(L) + 4·ITC`` (online ViT, text ×2, fusion ×4 with the image K/V
  recomputed in each, MLM head on all ``L`` positions; momentum ViT, text ×2, fusion ×1, head).
- VLMo: ``3 × [(depth + extra)·S(I) + (depth + extra)·S(T) + 4·depth·S(T+I) + 5·patch + H(T)]``, where
  ``extra = depth − vl_start`` VL-expert layers re-run for the VL-path features, 3 ITM passes and one MLM
  pass over the fused sequence, no teacher.

vlkit's executed FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one real step
(forward, backward, teacher), so work it removes (shared image K/V, masked-only MLM head) shows up.

Work vlkit adds shows up too: the reference counts the official models' linear patch embedding, while
the tiny recipes use the convolutional stem (``stem: conv``, :mod:`vlkit.nn.stem`), whose 3×3
convolutions cost about ten times as much per image; at tiny size that lifts the executed/reference
ratio above 1. :func:`image_stem` counts it (``image_stem`` in ``bench.json``) so the report can say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlkit.encoders.albef import AlbefConfig
from vlkit.encoders.base import EncoderConfig
from vlkit.encoders.mome import MomeConfig
from vlkit.nn.stem import build_stem
from vlkit.objectives.base import ObjectiveConfig
from vlkit.objectives.itc import ITCConfig


def layer_flops(n: int, d: int, ffn: int) -> float:
    """``S(N)``: one self-attention transformer layer on ``n`` tokens of width ``d`` (forward, per sample)."""
    return 8 * n * d * d + 4 * n * d * ffn + 4 * n * n * d


def fusion_layer_flops(l_text: int, m_image: int, d: int, ffn: int, d_image: int) -> float:
    """``X(L, M)``: ALBEF fusion layer — self-attention on ``L`` text tokens, cross-attention to ``M``
    image tokens (K/V projected from width ``d_image``), FFN on ``L``."""
    return (layer_flops(l_text, d, ffn) + 4 * l_text * d * d + 4 * m_image * d_image * d
            + 4 * l_text * m_image * d)


def mlm_head_flops(positions: int, d: int, vocab: int) -> float:
    """``H(n)``: transform ``d→d`` and decoder ``d→V`` on ``n`` positions."""
    return positions * (2 * d * d + 2 * d * vocab)


def patch_embed_flops(m_image: int, patch: int, d: int) -> float:
    """Linear patch embedding of ``M − 1`` patches of ``3·p²`` values."""
    return 2 * (m_image - 1) * 3 * patch * patch * d


@dataclass(frozen=True)
class AlbefShape:
    """What ALBEF's reference FLOPs depend on."""

    d_image: int
    d_text: int
    ffn_image: int
    ffn_text: int
    vit_depth: int
    text_layers: int
    fusion_layers: int
    patch: int
    image_tokens: int
    vocab: int
    embed_dim: int
    queue: int


def albef_reference(shape: AlbefShape, text_len: int, batch: int) -> dict[str, float]:
    """The official ALBEF step's train FLOPs per sample and its parts (keys ``total``, ``vit``,
    ``text``, ``fusion``, ``mlm_head``, ``itc``)."""
    s = shape
    vit = s.vit_depth * layer_flops(s.image_tokens, s.d_image, s.ffn_image) + patch_embed_flops(
        s.image_tokens, s.patch, s.d_image)
    text = s.text_layers * layer_flops(text_len, s.d_text, s.ffn_text)
    fusion = s.fusion_layers * fusion_layer_flops(text_len, s.image_tokens, s.d_text, s.ffn_text, s.d_image)
    head = mlm_head_flops(text_len, s.d_text, s.vocab)
    itc = 4 * s.embed_dim * (batch + s.queue)
    parts = {"vit": 4 * vit, "text": 8 * text, "fusion": 13 * fusion, "mlm_head": 4 * head, "itc": 4 * itc}
    return {"total": sum(parts.values()), **parts}


@dataclass(frozen=True)
class MomeShape:
    """What VLMo's reference FLOPs depend on."""

    d: int
    ffn: int
    depth: int
    vl_start: int
    patch: int
    image_tokens: int
    vocab: int


def vlmo_reference(shape: MomeShape, text_len: int) -> dict[str, float]:
    """The official VLMo step's train FLOPs per sample (ITC with VL path, 3 ITM passes, MLM), no teacher."""
    s = shape
    layers = s.depth + (s.depth - s.vl_start)
    image = layers * layer_flops(s.image_tokens, s.d, s.ffn)
    text = layers * layer_flops(text_len, s.d, s.ffn)
    fused = 4 * s.depth * layer_flops(text_len + s.image_tokens, s.d, s.ffn)
    patch = 5 * patch_embed_flops(s.image_tokens, s.patch, s.d)
    head = mlm_head_flops(text_len, s.d, s.vocab)
    parts = {"image": 3 * image, "text": 3 * text, "fused": 3 * fused, "patch": 3 * patch, "mlm_head": 3 * head}
    return {"total": sum(parts.values()), **parts}


def reference_flops(encoder_cfg: EncoderConfig, objectives: Mapping[str, ObjectiveConfig], text_len: int,
                    batch: int) -> dict[str, float] | None:
    """The reference for a recipe's encoder (ALBEF or MoME), or None (no official step to compare)."""
    if isinstance(encoder_cfg, AlbefConfig):
        image, bert = encoder_cfg.image, encoder_cfg.text
        itc = next((c for c in objectives.values() if isinstance(c, ITCConfig)), None)
        albef = AlbefShape(d_image=image.dim, d_text=bert.dim, ffn_image=int(image.dim * image.mlp_ratio),
                           ffn_text=bert.intermediate, vit_depth=image.depth, text_layers=encoder_cfg.fusion_layer,
                           fusion_layers=bert.layers - encoder_cfg.fusion_layer, patch=image.patch_size,
                           image_tokens=1 + (image.image_size // image.patch_size) ** 2, vocab=bert.vocab_size,
                           embed_dim=encoder_cfg.embed_dim, queue=itc.queue_size if itc else 0)
        return albef_reference(albef, text_len, batch)
    if isinstance(encoder_cfg, MomeConfig):
        mome = MomeShape(d=encoder_cfg.dim, ffn=int(encoder_cfg.dim * encoder_cfg.mlp_ratio), depth=encoder_cfg.depth,
                         vl_start=encoder_cfg.vl_start, patch=encoder_cfg.patch_size,
                         image_tokens=1 + (encoder_cfg.image_size // encoder_cfg.patch_size) ** 2,
                         vocab=encoder_cfg.vocab_size)
        return vlmo_reference(mome, text_len)
    return None


def _stem_flops(stem: str, patch: int, dim: int, image_size: int) -> tuple[float, float]:
    """FLOPs of one image through ``stem``: (forward, forward + backward of its weights), counted with
    ``FlopCounterMode`` on the meta device."""
    with torch.device("meta"):
        module = build_stem(stem, patch, dim)  # type: ignore[arg-type]
        images = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as forward:
        out = module(images)
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    return float(forward.get_total_flops()), float(forward.get_total_flops() + backward.get_total_flops())


def image_stem(encoder_cfg: EncoderConfig, objectives: Mapping[str, ObjectiveConfig]) -> dict[str, Any] | None:
    """What the recipe's convolutional image stem executes beyond the linear patch embedding the reference
    formula counts, per sample (None when the stem is the linear one, or there is no reference):
    ``key`` (the recipe key), ``stem_gflops_forward`` and ``patch_gflops_forward`` (one image, one forward
    pass), ``extra_gflops_per_sample`` (the online forward and backward, and the momentum teacher's forward
    when an objective uses the teacher)."""
    if isinstance(encoder_cfg, AlbefConfig):
        image, key = encoder_cfg.image, "encoder.image.stem"
        stem, patch, dim, size = image.stem, image.patch_size, image.dim, image.image_size
    elif isinstance(encoder_cfg, MomeConfig):
        key = "encoder.stem"
        stem, patch, dim, size = encoder_cfg.stem, encoder_cfg.patch_size, encoder_cfg.dim, encoder_cfg.image_size
    else:
        return None
    if stem == "patch":
        return None
    stem_fwd, stem_train = _stem_flops(stem, patch, dim, size)
    patch_fwd, patch_train = _stem_flops("patch", patch, dim, size)
    teacher = any(cfg.needs_teacher for cfg in objectives.values())
    extra = (stem_train - patch_train) + (stem_fwd - patch_fwd if teacher else 0.0)
    return {"stem": stem, "key": key, "stem_gflops_forward": stem_fwd / 1e9, "patch_gflops_forward": patch_fwd / 1e9,
            "teacher": teacher, "extra_gflops_per_sample": extra / 1e9}
