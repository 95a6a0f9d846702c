"""Training checkpoint files: atomic writes, the last ``k`` kept, safe loading (``weights_only=True``).

A checkpoint holds everything needed to continue bit for bit: model (teacher and queues included),
optimizer, scheduler, step, samples consumed, RNG states and the resolved recipe. Model and optimizer
state are full tensors keyed by parameter name (version 2), whatever the number of processes and the
strategy (DDP / FSDP) that wrote them, so a run resumes at another world size. Version 1 (optimizer
state keyed by parameter position, one process) still loads.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "vlkit-train-state"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file in the same folder and ``os.replace``, so a
    crash never leaves a truncated checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep_last]:
        path.unlink(missing_ok=True)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (tensors and plain containers only)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vlkit training checkpoint")
    if state.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has checkpoint version {state.get('version')}; this vlkit reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    return state
