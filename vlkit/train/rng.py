"""The global random-number state a training checkpoint saves, so a resumed run draws what the
uninterrupted one would have."""

from __future__ import annotations

from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def cpu_rng(state: dict[str, Any]) -> dict[str, Any]:
    """An RNG state as :func:`restore_rng` needs it (byte tensors on the CPU)."""
    return {k: v.cpu() if isinstance(v, torch.Tensor) else [t.cpu() for t in v] for k, v in state.items()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
