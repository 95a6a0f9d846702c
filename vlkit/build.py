"""Builders at the edge: turn validated recipe sections into modules.

This is where the registry is read: an encoder from its section, each objective from its section with
its nested parts (heads, negative samplers) built here and injected (``ITM(cfg, head=..., sampler=...)``,
see :meth:`vlkit.objectives.base.Objective.build`), and the model assembled from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from vlkit import registry
from vlkit.core.errors import UserError
from vlkit.encoders.base import Encoder, EncoderConfig
from vlkit.heads.base import Head, HeadShape
from vlkit.models.model import PretrainModel, assemble
from vlkit.models.momentum import MomentumConfig
from vlkit.objectives.base import Objective, ObjectiveConfig
from vlkit.objectives.negatives import NegativeSampler, SamplerConfig
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


class Parts:
    """The :class:`~vlkit.objectives.base.PartsFactory` objectives are built with: the encoder they sit on,
    and heads and negative samplers from the registry.

    Args:
        encoder: the online encoder.
    """

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def head(self, name: str, shape: HeadShape) -> nn.Module:
        """The head registered as ``name``, built for ``shape`` (:meth:`vlkit.heads.base.Head.from_shape`)."""
        target = registry.get("head", name).target
        if not (isinstance(target, type) and issubclass(target, Head)):
            raise UserError(f"head `{name}` ({target!r}) must derive from vlkit.heads.Head and define from_shape")
        return target.from_shape(shape)

    def sampler(self, cfg: SamplerConfig) -> NegativeSampler:
        """The negative sampler ``cfg.type``, built from its validated config."""
        target = registry.get("negatives", cfg.type).target
        if not (isinstance(target, type) and issubclass(target, NegativeSampler)):
            raise UserError(f"negatives `{cfg.type}` ({target!r}) must derive from "
                            "vlkit.objectives.negatives.NegativeSampler")
        return target(cfg)


def build_objective(name: str, cfg: ObjectiveConfig, encoder: Encoder) -> Objective:
    """The objective registered as ``cfg.type``, named ``name`` in the recipe, with its parts built over
    ``encoder`` (registry kind ``objective``)."""
    target = registry.get("objective", cfg.type).target
    if not (isinstance(target, type) and issubclass(target, Objective)):
        raise UserError(f"objective `{cfg.type}` ({target!r}) must derive from vlkit.objectives.Objective")
    return target.build(cfg, name, Parts(encoder))


def build_objectives(configs: Mapping[str, ObjectiveConfig], encoder: Encoder) -> dict[str, Objective]:
    """Objective modules from validated recipe sections, in recipe order."""
    return {name: build_objective(name, cfg, encoder) for name, cfg in configs.items()}


def build_pretrain_model(encoder: Encoder, objective_configs: Mapping[str, ObjectiveConfig],
                         momentum: MomentumConfig | None) -> PretrainModel:
    """The model: the objectives built over ``encoder``, the momentum teacher when one of them needs it,
    and the similarity provider the configs declare."""
    return assemble(encoder, build_objectives(objective_configs, encoder), momentum)


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
