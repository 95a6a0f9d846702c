"""BEiT / ViT weights into VLMo's MoME encoder (:class:`~vlkit.encoders.mome.MomeEncoder`): stage 1 of
VLMo's stage-wise pre-training.

As VLMo's ``convert_to_textpt_ckpt`` does: every block's attention, ``norm1`` and layer scales are
shared by all experts and load as they are; the block's FFN (``norm2``, ``mlp``) is copied into the
image expert and, on request (``init_experts``), into the text and vision-language experts; the
patch embedding, [CLS] and final norm go to ``transformer.*``. BEiT's per-layer relative position
tables ``[(2W-1)² + 3, H]`` (or its shared table) fill the image rows of MoME's one table, layer ``i``
in columns ``i·H … (i+1)·H - 1``, resized with BEiT's geometric interpolation when the resolution
differs; the text and cross-modal rows keep their zero initialization.

A plain ViT works too: its fused ``qkv.bias`` becomes ``q_bias``/``v_bias`` (the key bias is dropped,
which changes no attention weight: it adds the same logit to every key of a query), and missing layer
scales load as 1 (or, the other way round, layer scales are folded into the projections when the MoME
has none), so the image path computes what the checkpoint does.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vlkit.encoders.mome import MomeEncoder
from vlkit.nn.multiway import MultiwayBlock
from vlkit.nn.relative_position import num_image_buckets
from vlkit.weights.common import describe_keys, fetch_image_state, load_mapped, resize_grid, restore_prefix
from vlkit.weights.files import strip_prefix
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import Source, TowerInitError
from vlkit.weights.timm_vit import ANCHOR, check_patch_embed, fold_block_scales

log = logging.getLogger("vlkit.weights")

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


def _source_heads(model: nn.Module | None) -> int | None:
    blocks = getattr(model, "blocks", None)
    attn = getattr(blocks[0], "attn", None) if blocks is not None and len(blocks) else None
    return getattr(attn, "num_heads", None)


def _attention(state: dict[str, Tensor], i: int, report: LoadReport) -> dict[str, tuple[Tensor, str]]:
    """Block ``i``'s shared attention and pre-attention norm, as MoME keys."""
    src, dst = f"blocks.{i}", f"transformer.blocks.{i}"
    out = {f"{dst}.{k}": (state[f"{src}.{k}"], f"{src}.{k}") for k in
           ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
            "attn.q_bias", "attn.v_bias") if f"{src}.{k}" in state}
    qkv_bias = state.get(f"{src}.attn.qkv.bias")
    if qkv_bias is not None and f"{src}.attn.q_bias" not in state:
        q, _, v = qkv_bias.chunk(3)
        out[f"{dst}.attn.q_bias"] = (q, f"{src}.attn.qkv.bias")
        out[f"{dst}.attn.v_bias"] = (v, f"{src}.attn.qkv.bias")
        if i == 0:
            report.notes.append("qkv.bias split into q_bias and v_bias; the key bias is dropped (it shifts all of a "
                                "query's logits equally, so attention is unchanged)")
    return out


def _experts(block: MultiwayBlock, state: dict[str, Tensor], i: int,
             experts: Sequence[str]) -> dict[str, tuple[Tensor, str]]:
    """Block ``i``'s FFN copied into each named expert of ``block`` (as the block routes that name;
    a block without a ``vl`` expert skips it)."""
    src, dst = f"blocks.{i}", f"transformer.blocks.{i}"
    names = {id(m): n for n, m in block.named_modules()}
    out = {}
    for expert in experts:
        try:
            norm, mlp = block.expert(expert)
        except ValueError:  # no vl expert below vl_start
            continue
        for part, target in (("norm2", names[id(norm)]), ("mlp.fc1", f"{names[id(mlp)]}.fc1"),
                             ("mlp.fc2", f"{names[id(mlp)]}.fc2")):
            for leaf in ("weight", "bias"):
                if f"{src}.{part}.{leaf}" in state:
                    out[f"{dst}.{target}.{leaf}"] = (state[f"{src}.{part}.{leaf}"], f"{src}.{part}.{leaf}")
    return out


def _relative_table(encoder: MomeEncoder, state: dict[str, Tensor], depth: int,
                    report: LoadReport) -> tuple[Tensor, str] | None:
    """MoME's bias table with the checkpoint's image buckets in place (None: the checkpoint has none)."""
    from timm.layers import resize_rel_pos_bias_table

    table = encoder.relative_position_bias_table
    assert table is not None
    cfg = encoder.cfg
    rows, heads = num_image_buckets(cfg.grid), cfg.heads
    names = [SHARED_TABLE] * depth if SHARED_TABLE in state else [
        f"blocks.{i}.attn.relative_position_bias_table" for i in range(depth)]
    names = [n for n in names if n in state]
    if not names:
        return None
    out = table.detach().clone()
    for i, name in enumerate(names):
        part = state[name]
        if part.shape[1] != heads:
            raise TowerInitError(f"{report.tower}: the checkpoint has {part.shape[1]} attention heads, encoder.heads "
                                 f"is {heads}")
        if part.shape[0] != rows:
            with warnings.catch_warnings():  # timm's interpolation warns about its own indexing
                warnings.simplefilter("ignore", UserWarning)
                part = resize_rel_pos_bias_table(part.float(), (cfg.grid, cfg.grid), (rows, heads))
        out[:rows, i * heads:(i + 1) * heads] = part.to(out.dtype)
    if state[names[0]].shape[0] != rows:
        report.notes.append(f"relative position tables resized to a {cfg.grid}×{cfg.grid} grid (BEiT's geometric "
                            "interpolation)")
    shared = " (the shared table, in every layer)" if names[0] == SHARED_TABLE else ""
    report.notes.append(f"relative_position_bias_table: image rows [0, {rows}) of layers 0–{len(names) - 1} from the "
                        f"checkpoint{shared}; text and cross-modal rows stay zero")
    return out, " + ".join(dict.fromkeys(names))


def load_mome(encoder: MomeEncoder, source: Source, key: str = "encoder.init",
              experts: Sequence[str] = ("image",)) -> LoadReport:
    """Initialize ``encoder``'s transformer from a BEiT or ViT checkpoint.

    Args:
        encoder: the MoME encoder.
        source: a timm model name or a local file / folder in timm's (or BEiT's) layout.
        key: the recipe key, for messages.
        experts: the experts that receive the checkpoint's FFN (``image``; ``text``, ``vl`` optional).
    """
    raw, resolved, model = fetch_image_state(source, key)
    state, prefix = strip_prefix(raw, ANCHOR)
    if ANCHOR not in state:
        raise TowerInitError(f"{key}: {resolved} is not a ViT / BEiT state dict (no `{ANCHOR}`; keys: "
                             f"{describe_keys(raw)})")
    cfg = encoder.cfg
    check_patch_embed(state[ANCHOR], cfg.dim, cfg.patch_size, cfg.stem, "encoder")
    if (heads := _source_heads(model)) is not None and heads != cfg.heads:
        raise TowerInitError(f"{key}: the checkpoint has {heads} attention heads, encoder.heads is {cfg.heads}")
    report = LoadReport(tower=key, source=source.text, resolved=resolved)
    state = dict(state)
    depth = min(cfg.depth, 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.match(k))), default=-1))
    used = {k for k in state if k.endswith("relative_position_index")}
    mapped: dict[str, tuple[Tensor, str]] = {}
    if cfg.layer_scale is None:
        if folded := fold_block_scales(state, depth):
            used.update(folded)
            report.notes.append("the checkpoint's layer scales folded into attn.proj and mlp.fc2 (encoder.layer_scale "
                                "is null)")
    else:
        for i in range(depth):
            for ours, theirs in (("gamma_1", ("gamma_1", "ls1.gamma")), ("gamma_2", ("gamma_2", "ls2.gamma"))):
                found = next((f"blocks.{i}.{t}" for t in theirs if f"blocks.{i}.{t}" in state), None)
                value = state[found] if found else torch.ones(cfg.dim)
                mapped[f"transformer.blocks.{i}.{ours}"] = (value, found or "1 (no layer scale in the checkpoint)")
        if not any(f"blocks.0.{t}" in state for t in ("gamma_1", "ls1.gamma")):
            report.notes.append("the checkpoint has no layer scales: gamma_1, gamma_2 set to 1")
    for name in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"):
        if name in state:
            mapped[f"transformer.{name}"] = (state[name], name)
    if "pos_embed" in state:
        if encoder.transformer.pos_embed is not None:
            table, note = resize_grid(state["pos_embed"], cfg.grid)
            mapped["transformer.pos_embed"] = (table, "pos_embed")
            report.notes.extend([note] if note else [])
        else:
            report.notes.append("the checkpoint's absolute positions are not used (encoder.position: relative)")
    for i in range(depth):
        mapped.update(_attention(state, i, report))
        mapped.update(_experts(encoder.transformer.block_at(i), state, i, experts))
    if encoder.relative_position_bias_table is not None:
        if (relative := _relative_table(encoder, state, depth, report)) is not None:
            mapped["relative_position_bias_table"] = relative
    elif any(k.endswith("relative_position_bias_table") for k in state):
        report.notes.append("the checkpoint's relative position biases are not used (encoder.position: absolute)")
    report.notes.append(f"FFN of blocks 0–{depth - 1} copied into the {', '.join(experts)} expert(s); attention shared")
    if depth < cfg.depth:
        report.notes.append(f"the encoder has {cfg.depth} blocks, the checkpoint {depth}: blocks "
                            f"{depth}–{cfg.depth - 1} keep their initialization")
    if heads is None and "relative_position_bias_table" not in mapped:
        report.notes.append("the checkpoint does not record its attention heads: encoder.heads not checked")
    load_mapped(encoder, mapped, report, state, used)
    restore_prefix(report, prefix, raw)
    log.info("%s", report.summary())
    return report
