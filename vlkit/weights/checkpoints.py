"""Training checkpoint files: atomic writes, the last ``k`` kept, safe loading (``weights_only=True``).

A checkpoint holds everything needed to continue bit for bit: model (teacher and queues included),
optimizer, scheduler, step, samples consumed, RNG states and the resolved recipe. Model and optimizer
state are full tensors keyed by parameter name (version 2), whatever the number of processes and the
strategy (DDP / FSDP) that wrote them, so a run resumes at another world size. Version 1 (optimizer
state keyed by parameter position, one process) still loads.

Writes never leave a non-finite or a half-written file under a final name: every floating tensor of the
state is checked finite first (:class:`~vlkit.core.errors.NonFiniteError` otherwise), and the bytes go to
a temporary file beside the target (``.<name>.<pid>-<random>.tmp``, created with the process's umask like
any other file of the run) that is renamed into place. A crash leaves at most such a temporary file;
:func:`remove_orphaned_temps` clears them when the next run starts in the folder.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlkit.core.errors import CheckpointError, NonFiniteError

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


_TEMP = re.compile(r"^\..+\.tmp$")


def create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusive temporary file beside ``path`` (``.<name>.<pid>-<random>.tmp``), opened for
    writing; its mode is ``0o666`` less the umask, as for every other file the run writes (not the
    ``0600`` of ``tempfile.mkstemp``). Returns the descriptor and the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def remove_orphaned_temps(*folders: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.….tmp``) a crashed write left in ``folders``; returns them.
    Call it only while holding the folder (the run lock): a live writer's file looks the same."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if _TEMP.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _tensors(value: Any, key: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with a dotted key path."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for name, inner in value.items():
            yield from _tensors(inner, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            yield from _tensors(inner, f"{key}.{index}" if key else str(index))


def nonfinite_keys(state: Any) -> list[str]:
    """Dotted keys of the floating tensors in ``state`` (nested dicts / lists) holding NaN or ±inf."""
    return [key for key, tensor in _tensors(state, "")
            if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all())]


def largest_magnitude(weights: dict[str, torch.Tensor]) -> float:
    """The largest ``|value|`` over the floating tensors of a state dict (0 when there are none)."""
    largest = 0.0
    for tensor in weights.values():
        if tensor.is_floating_point() and tensor.numel():
            largest = max(largest, float(tensor.detach().abs().max()))
    return largest if math.isfinite(largest) else math.inf


def require_finite(state: Any, what: str) -> None:
    """Raise :class:`~vlkit.core.errors.NonFiniteError` naming the first keys of ``state`` (nested) whose
    floating tensors hold NaN or ±inf; ``what`` says what was about to happen to them."""
    bad = nonfinite_keys(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{what}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); "
                             "refusing to write or use them")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file in the same folder and ``os.replace``, so a
    crash never leaves a truncated checkpoint under the final name.

    Raises:
        NonFiniteError: a floating tensor of ``state`` (model, optimizer, ...) is NaN or infinite;
            nothing is written.
    """
    require_finite(state, f"checkpoint {path}")
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (``metrics.json``) through a temporary file and ``os.replace``: readers
    see the old file or the new one, never half of one."""
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep_last]:
        path.unlink(missing_ok=True)


def stored_recipe(path: Path) -> str | None:
    """The resolved recipe a checkpoint was written with (memory-mapped: the tensors are not read)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    recipe = state.get("recipe") if isinstance(state, dict) else None
    return recipe if isinstance(recipe, str) else None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (tensors and plain containers only)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vlkit training checkpoint")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this vlkit reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    return state
