"""Pieces every tower loader shares: fetching a state dict for a :class:`Source`, resizing position
grids, folding layer scales, and loading a mapped state dict with a :class:`LoadReport`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from vlkit.weights.files import read_state_dict
from vlkit.weights.hub import timm_state_dict
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import Source, TowerInitError


def fetch_image_state(source: Source, key: str) -> tuple[dict[str, Tensor], str, nn.Module | None]:
    """Weights of a timm model or a local file / folder: ``(state, where they came from, the timm model
    or None)``."""
    if source.kind == "timm":
        state, model = timm_state_dict(source.name, key)
        return state, f"timm:{source.name}", model
    if source.kind != "path":
        raise TowerInitError(f"{key}: `{source.text}`: image towers start from `timm:<model>` or a local file / folder")
    state, file = read_state_dict(source.path)
    return state, str(file), None


def split_prefix_tokens(rows: int) -> tuple[int, int]:
    """``(prefix tokens, grid side)`` of a position table of ``rows`` rows: ``[CLS] + s²`` (ViT, DeiT),
    ``s²`` (no class-token position), ``[CLS, DIST] + s²`` (distilled DeiT), in that order of preference."""
    for prefix in (1, 0, 2):
        side = math.isqrt(max(rows - prefix, 0))
        if side > 0 and side * side == rows - prefix:
            return prefix, side
    raise TowerInitError(f"a position table of {rows} rows is not a square grid with 0, 1 or 2 prefix tokens")


def resize_grid(pos_embed: Tensor, grid: int) -> tuple[Tensor, str | None]:
    """A checkpoint's ``pos_embed [1, k + s², D]`` as ``[1, 1 + grid², D]`` for a ViT with one [CLS]:
    the class position kept (zeros when the checkpoint has none; a distillation token's row dropped),
    the grid resized bicubically (``align_corners=False``, no antialiasing; as ALBEF does). Returns
    the table and a note (None when nothing changed)."""
    from vlkit.nn.vit import resize_pos_embed

    prefix, side = split_prefix_tokens(pos_embed.shape[1])
    cls = pos_embed[:, :1] if prefix else pos_embed.new_zeros(1, 1, pos_embed.shape[2])
    table = torch.cat((cls, pos_embed[:, prefix:]), dim=1)
    notes = []
    if prefix == 0:
        notes.append("the checkpoint adds no position to [CLS]: its row is zero")
    if prefix == 2:
        notes.append("the distillation token's position row is dropped")
    if side != grid:
        table = resize_pos_embed(table.float(), grid).to(pos_embed.dtype)
        notes.append(f"pos_embed: {side}×{side} grid resized bicubically to {grid}×{grid} ([CLS] position kept)")
    return table, "; ".join(notes) or None


def fold_scale(state: dict[str, Tensor], gamma: Tensor, linear: str) -> None:
    """Fold a per-channel output scale ``γ ⊙ linear(x)`` into ``linear``'s weight and bias (in place
    in ``state``; ``linear`` is a key prefix such as ``blocks.0.attn.proj``)."""
    state[f"{linear}.weight"] = state[f"{linear}.weight"] * gamma[:, None]
    if f"{linear}.bias" in state:
        state[f"{linear}.bias"] = state[f"{linear}.bias"] * gamma


def load_mapped(module: nn.Module, mapped: dict[str, tuple[Tensor, str]], report: LoadReport,
                source_keys: Iterable[str], used: set[str] | None = None) -> LoadReport:
    """Copy ``mapped`` (module key → (tensor, checkpoint key)) into ``module`` and fill ``report``.

    Every mapped tensor must have the module's shape (a mismatch is a :class:`TowerInitError` naming
    the key and both shapes). Module keys left out are ``new``; checkpoint keys that fed no mapped
    tensor (nor ``used``) are ``unused``; a mapped tensor built from several checkpoint keys names them
    joined by `` + ``.
    """
    own = module.state_dict()
    for name, (tensor, origin) in mapped.items():
        if name not in own:
            raise TowerInitError(f"{report.tower}: internal key map names `{name}`, which the tower lacks")
        if tensor.shape != own[name].shape:
            raise TowerInitError(f"{report.tower}: checkpoint `{origin}` has shape {tuple(tensor.shape)}, the "
                                 f"tower's `{name}` has {tuple(own[name].shape)}; the recipe's shape does not match "
                                 "the weights")
    module.load_state_dict({k: t for k, (t, _) in mapped.items()}, strict=False)
    report.loaded.update({k: origin for k, (_, origin) in mapped.items()})
    report.new.extend(k for k in own if k not in mapped)
    consumed = {part for _, origin in mapped.values() for part in origin.split(" + ")} | (used or set())
    report.unused.extend(k for k in source_keys if k not in consumed and k not in report.held)
    return report


def describe_keys(state: dict[str, Tensor], n: int = 5) -> str:
    """The first few keys of a state dict, for errors about unrecognized layouts."""
    keys = list(state)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def restore_prefix(report: LoadReport, prefix: str, original: dict[str, Tensor]) -> None:
    """Name checkpoint keys in ``report`` as the checkpoint does, with the ``prefix`` that
    :func:`~vlkit.weights.files.strip_prefix` removed."""
    if not prefix:
        return

    def full(key: str) -> str:
        return " + ".join(prefix + k if prefix + k in original else k for k in key.split(" + "))

    report.loaded = {k: full(v) for k, v in report.loaded.items()}
    report.unused = [full(k) for k in report.unused]
