"""Builders at the edge: turn validated recipe sections into modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from vlkit import registry
from vlkit.encoders.base import Encoder, EncoderConfig
from vlkit.weights.apply import initialize_towers


def build_encoder(cfg: EncoderConfig, device: torch.device | str | None = None, *,
                  load_weights: bool = True) -> Encoder:
    """The encoder registered under ``cfg.type``, built from ``cfg`` (on ``device``; ``"meta"`` builds
    the structure without allocating memory, for parameter counts), with activation checkpointing of
    its transformer blocks when ``cfg.grad_checkpointing`` says so. Towers whose config names ``init``
    weights start from them (not on ``meta``, nor with ``load_weights=False``, e.g. when a checkpoint
    will overwrite them anyway); ``encoder.init_reports`` says what each loaded."""
    entry = registry.get("encoder", cfg.type)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        encoder = entry.target(cfg)
    encoder.init_reports = tuple(initialize_towers(encoder, cfg)) if load_weights else ()
    if cfg.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    return encoder


@dataclass(frozen=True)
class ParamRow:
    """One line of a parameter report: ``name`` holds ``count`` parameters not counted above it."""

    name: str
    count: int


def parameter_report(groups: Mapping[str, Iterable[nn.Module | nn.Parameter]]) -> list[ParamRow]:
    """Parameters per named group, each tensor counted once (tied weights go to the first group that
    holds them), plus a ``total`` row."""
    seen: set[int] = set()
    rows = []
    for name, members in groups.items():
        count = 0
        for member in members:
            params = [member] if isinstance(member, nn.Parameter) else list(member.parameters())
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    count += p.numel()
        rows.append(ParamRow(name, count))
    rows.append(ParamRow("total", sum(r.count for r in rows)))
    return rows


def format_report(rows: list[ParamRow]) -> str:
    """A two-column table: name, count (with millions)."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'part':<{width}}  {'parameters':>14}  {'':>8}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.count:>14,}  {r.count / 1e6:>7.1f}M")
    return "\n".join(lines)
