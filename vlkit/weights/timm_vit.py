"""timm / DeiT ViT weights into vlkit's :class:`~vlkit.nn.vit.VisionTransformer` (ALBEF's and the
dual encoder's image tower), and any timm weights into a dual encoder's timm backbone.

vlkit's ViT has timm's state-dict layout, so most keys load as they are. On the way: the position
grid is resized bicubically to the recipe's resolution ([CLS] kept; ALBEF's 14 → 16 for DeiT-B/16 at
224 → 256 px); layer scales (``ls1/ls2.gamma``, ``gamma_1/2``) are folded into the projections they
scale; BEiT-style ``q_bias``/``v_bias`` become the fused ``qkv.bias`` (key bias 0). Classifier heads,
distillation tokens and ``fc_norm`` are reported unused.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import Tensor, nn

from vlkit.nn.vit import VisionTransformer
from vlkit.weights.common import (
    describe_keys,
    fetch_image_state,
    fold_scale,
    load_mapped,
    resize_grid,
    restore_prefix,
)
from vlkit.weights.files import strip_prefix
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import Source, TowerInitError

log = logging.getLogger("vlkit.weights")

ANCHOR = "patch_embed.proj.weight"


def fold_block_scales(state: dict[str, Tensor], depth: int) -> list[str]:
    """Fold the layer scales of blocks ``0 … depth-1`` into ``attn.proj`` and ``mlp.fc2``, in place;
    returns the folded checkpoint keys."""
    folded = []
    for i in range(depth):
        b = f"blocks.{i}"
        for attn_key, ffn_key in ((f"{b}.ls1.gamma", f"{b}.ls2.gamma"), (f"{b}.gamma_1", f"{b}.gamma_2")):
            if attn_key in state:
                fold_scale(state, state[attn_key], f"{b}.attn.proj")
                folded.append(attn_key)
            if ffn_key in state:
                fold_scale(state, state[ffn_key], f"{b}.mlp.fc2")
                folded.append(ffn_key)
    return folded


def qkv_bias_from_qv(state: dict[str, Tensor], block: str) -> Tensor | None:
    """BEiT's separate ``q_bias``, ``v_bias`` as one fused ``[3D]`` bias with a zero key bias."""
    q, v = state.get(f"{block}.attn.q_bias"), state.get(f"{block}.attn.v_bias")
    return None if q is None or v is None else torch.cat((q, torch.zeros_like(q), v))


def check_patch_embed(weight: Tensor, dim: int, patch: int, stem: str, base: str) -> None:
    """Raise a :class:`TowerInitError` naming both sides when the checkpoint's patch embedding
    ``[D, 3, p, p]`` does not fit the recipe's ``dim``, ``patch_size`` and ``stem``."""
    if stem != "patch":
        raise TowerInitError(f"{base}.init: ViT checkpoints have a linear patch embedding; {base}.stem is `{stem}` "
                             f"(set {base}.stem: patch)")
    if weight.shape[0] != dim:
        raise TowerInitError(f"{base}.init: the checkpoint's width is {weight.shape[0]}, {base}.dim is {dim}")
    if tuple(weight.shape[-2:]) != (patch, patch):
        raise TowerInitError(f"{base}.init: the checkpoint's patches are {weight.shape[-1]} px, "
                             f"{base}.patch_size is {patch}")


def load_vit(vit: VisionTransformer, source: Source, key: str = "encoder.image.init") -> LoadReport:
    """Initialize ``vit`` from a timm / DeiT checkpoint; returns the report (also logged)."""
    base = key.rsplit(".", 1)[0]
    raw, resolved, _ = fetch_image_state(source, key)
    state, prefix = strip_prefix(raw, ANCHOR)
    if ANCHOR not in state:
        raise TowerInitError(f"{key}: {resolved} is not a ViT state dict (no `{ANCHOR}`; keys: {describe_keys(raw)})")
    cfg = vit.cfg
    check_patch_embed(state[ANCHOR], cfg.dim, cfg.patch_size, cfg.stem, base)
    report = LoadReport(tower=key, source=source.text, resolved=resolved)
    if prefix:
        report.notes.append(f"weights read from under `{prefix}`")
    state = dict(state)
    used = set(fold_block_scales(state, cfg.depth))
    if used:
        report.notes.append("layer scales (ls1/ls2, gamma_1/2) folded into attn.proj and mlp.fc2")
    mapped: dict[str, tuple[Tensor, str]] = {}
    for name in vit.state_dict():
        if name == "pos_embed" and name in state:
            table, note = resize_grid(state[name], cfg.grid)
            mapped[name] = (table, name)
            if note:
                report.notes.append(note)
        elif name in state:
            mapped[name] = (state[name], name)
        elif name.endswith(".attn.qkv.bias"):
            block = name[: -len(".attn.qkv.bias")]
            if (bias := qkv_bias_from_qv(state, block)) is not None:
                mapped[name] = (bias, f"{block}.attn.q_bias + {block}.attn.v_bias")
    if any(k.endswith("relative_position_bias_table") for k in state):
        report.notes.append("the checkpoint's relative position biases have no place in a ViT (outputs differ)")
    if "fc_norm.weight" in state and "norm.weight" not in state:
        report.notes.append("the checkpoint normalizes after pooling (fc_norm); the final norm keeps its "
                            "initialization")
    load_mapped(vit, mapped, report, state, used)
    restore_prefix(report, prefix, raw)
    log.info("%s", report.summary())
    return report


def load_timm_backbone(model: nn.Module, source: Source, key: str = "encoder.image.init") -> LoadReport:
    """Initialize a timm backbone (a dual encoder's ``image_backbone``) from a timm name or a file in
    timm's layout, through the model family's own ``checkpoint_filter_fn`` (it resizes position
    embeddings and converts older layouts); every weight with the model's name and shape loads."""
    raw, resolved, _ = fetch_image_state(source, key)
    report = LoadReport(tower=key, source=source.text, resolved=resolved)
    state = raw
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(raw, model)
        except Exception as err:  # a family filter that cannot handle this file: load it as stored
            report.notes.append(f"timm's checkpoint filter failed ({type(err).__name__}: {err}); loaded as stored")
    own = model.state_dict()
    mapped = {k: (v, k) for k, v in state.items() if k in own and v.shape == own[k].shape}
    for k, v in state.items():
        if k in own and v.shape != own[k].shape:
            report.notes.append(f"`{k}`: checkpoint {tuple(v.shape)} ≠ model {tuple(own[k].shape)}, not loaded")
    if not mapped:
        raise TowerInitError(f"{key}: no weight of {resolved} fits the timm backbone {type(model).__name__} "
                             f"(keys: {describe_keys(raw)})")
    load_mapped(model, mapped, report, state)
    log.info("%s", report.summary())
    return report
