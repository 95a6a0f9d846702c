"""Activation (gradient) checkpointing of transformer blocks.

A block that inherits :class:`CheckpointedBlock` implements ``_block_forward``; its ``forward`` runs
that body directly or, when checkpointing is on, in training mode and with grad enabled, through
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the block keeps only its inputs and
recomputes its activations in backward. Non-reentrant checkpointing restores the RNG state for the
recomputation (dropout and stochastic depth draw the same masks) and supports keyword arguments and
inputs that do not require grad.

The checkpoint wraps the body of ``forward``, not ``__call__``, so module hooks (e.g. FSDP2's
pre-forward all-gather) stay outside the recomputed region. :func:`transformer_blocks` lists the same
blocks, in module order, for use as sharding units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class CheckpointedBlock(nn.Module):
    """Mixin of transformer blocks whose activations may be recomputed in backward.

    Subclasses implement :meth:`_block_forward` (the block's computation, with its own signature)
    and leave ``forward`` to this class.
    """

    grad_checkpointing: bool = False
    """Recompute this block's activations in backward (only in training mode with grad enabled)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run :meth:`_block_forward`, checkpointed when :attr:`grad_checkpointing` applies."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._block_forward, *args, use_reentrant=False, **kwargs)
        return self._block_forward(*args, **kwargs)

    def _block_forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @property
    def own_sharding_unit(self) -> bool:
        """Whether FSDP2 may shard this block on its own: true when its parameters are used only inside
        its ``forward`` (FSDP2 gathers them in a forward hook). A block with a method that callers run
        outside ``forward`` (an ALBEF fusion layer's image keys/values) says false and stays in the
        enclosing unit."""
        return True


def transformer_blocks(module: nn.Module) -> list[CheckpointedBlock]:
    """Every :class:`CheckpointedBlock` inside ``module`` (itself included), in module order."""
    return [m for m in module.modules() if isinstance(m, CheckpointedBlock)]


def set_grad_checkpointing(module: nn.Module, on: bool = True) -> int:
    """Turn activation checkpointing on or off for every block inside ``module``; returns how many."""
    blocks = transformer_blocks(module)
    for block in blocks:
        block.grad_checkpointing = on
    return len(blocks)


def compile_blocks(module: nn.Module, mode: str = "default") -> int:
    """``torch.compile`` every block inside ``module`` in place (each block its own compiled call, so a
    deep copy made before, such as a momentum teacher, keeps its own weights); returns how many."""
    import torch._dynamo

    blocks = transformer_blocks(module)
    # one graph per (block class, input shapes): text buckets × pair counts (B, 3B) × towers, online and
    # teacher; the default limit of 8 would send the rest back to eager
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    for block in blocks:
        block.compile(dynamic=False, mode=mode)
    return len(blocks)
