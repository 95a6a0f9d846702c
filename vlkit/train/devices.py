"""Where training runs: the device a recipe names and the CPU threads a process may use."""

from __future__ import annotations

import os

import torch

from vlkit.core.errors import UnavailableError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_cpu_threads(requested: int | None, num_workers: int) -> int:
    """Intra-op threads for CPU training: ``requested``, or this process's share of the cores left
    after the loader workers (the machine's training processes, ``LOCAL_WORLD_SIZE``, split them)."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = requested if requested is not None else max(1, (available_cores() - num_workers * processes) // processes)
    torch.set_num_threads(threads)
    return threads


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(f"train.device is `{name}` but CUDA is not available; use `auto` or `cpu`")
    return device
