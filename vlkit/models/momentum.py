"""The momentum teacher: an exponential moving average (EMA) of the encoder and of the objective
modules that distillation reads (e.g. the MLM head), updated after each optimizer step."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from vlkit.core.ranges import check_count, check_number
from vlkit.encoders.base import Encoder


@dataclass(kw_only=True)
class MomentumConfig:
    """The momentum teacher.

    Attributes:
        decay: EMA decay per step, ``θ_m ← decay · θ_m + (1 − decay) · θ`` (ALBEF: 0.995).
        dropout: run the teacher with dropout active, as ALBEF does (its teacher sits in the
            training module); false runs it in eval mode.
        warmup_steps: objectives consult the teacher only from this step on (ALBEF: 0, its towers
            start pre-trained). Until then the teacher copies the online weights at every step (no
            averaging), ITC compares the online features of the batch (no queue) and distillation is
            off; the queue fills from step 0. Training from scratch, a teacher averaged from random
            networks has near-identical features for every sample: its queue and soft targets then
            hold the run on the collapsed solution (loss = log batch).
    """

    decay: float = 0.995
    dropout: bool = True
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_number("decay", self.decay, 0.0, 1.0, high_open=True)
        check_count("warmup_steps", self.warmup_steps, low=0)


def _slot(name: str) -> str:
    return name.replace(".", "__")


class MomentumTeacher(nn.Module):
    """EMA copies of ``encoder`` and ``modules``, never trained by gradients.

    The copies are made together in one ``deepcopy`` so weights shared online (an MLM decoder tied
    to the word embeddings) stay shared in the teacher. The online modules are referenced, not
    registered, so the model's state dict holds them once.

    Args:
        encoder: the online encoder.
        modules: other online modules to copy, by dotted name (``"mlm.head"``).
        cfg: decay and dropout.
    """

    _online: nn.ModuleDict
    """The online modules the copies follow (set with ``object.__setattr__``: not a sub-module)."""

    def __init__(self, encoder: Encoder, modules: dict[str, nn.Module], cfg: MomentumConfig) -> None:
        super().__init__()
        self.cfg = cfg
        online = nn.ModuleDict({"encoder": encoder, **{_slot(k): m for k, m in modules.items()}})
        self.copies = copy.deepcopy(online)
        self.copies.requires_grad_(False)
        self._names = dict(modules)
        object.__setattr__(self, "_online", online)  # a reference, not a sub-module

    @property
    def encoder(self) -> Encoder:
        encoder = self.copies["encoder"]
        if not isinstance(encoder, Encoder):
            raise TypeError(f"the teacher's encoder copy is a {type(encoder).__name__}, not an Encoder")
        return encoder

    @property
    def modules_by_name(self) -> dict[str, nn.Module]:
        """Teacher copies of the extra modules by dotted name."""
        return {name: self.copies[_slot(name)] for name in self._names}

    def train(self, mode: bool = True) -> MomentumTeacher:
        return super().train(mode and self.cfg.dropout)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Listed on each call: `.to(device)` replaces buffer tensors, so references would go stale.
        teacher = [p.data for p in self.copies.parameters()]
        online = [p.data for p in self._online.parameters()]
        if len(teacher) != len(online):
            raise RuntimeError("the teacher and the online modules no longer have the same parameters")
        return teacher, online

    @torch.no_grad()
    def update(self, step: int) -> None:
        """EMA step after optimizer step ``step`` (0-based) over all parameters with foreach kernels
        (fp32 weights); during the warm-up the online weights are copied; buffers are always copied."""
        teacher, online = self._pairs()
        decay = self.cfg.decay if step + 1 >= self.cfg.warmup_steps else 0.0
        if teacher:
            torch._foreach_lerp_(teacher, online, 1.0 - decay)
        for t, o in zip(self.copies.buffers(), self._online.buffers(), strict=True):
            t.copy_(o)

    @torch.no_grad()
    def reset(self) -> None:
        """Copy the online weights exactly (the start of training)."""
        teacher, online = self._pairs()
        torch._foreach_copy_(teacher, online)
        for t, o in zip(self.copies.buffers(), self._online.buffers(), strict=True):
            t.copy_(o)
