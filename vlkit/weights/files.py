"""Reading state dicts from weights files and Hugging Face style folders, on the CPU.

Files: ``.safetensors`` (read without pickle) or PyTorch pickles (``.pth``, ``.pt``, ``.bin``,
``.ckpt``, read with ``weights_only=True``). Training checkpoints nest their weights (``{"model": ...}``
in DeiT and BEiT releases, ``{"state_dict": ...}`` in Lightning, ``{"module": ...}`` in DeepSpeed);
the nesting and a DDP ``module.`` prefix are removed. Folders: ``model.safetensors``,
``pytorch_model.bin`` (or their sharded ``*.index.json`` forms), else the folder's only weights file,
and ``config.json`` beside them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlkit.weights.sources import WEIGHT_SUFFIXES, TowerInitError

FOLDER_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_NESTING = ("state_dict", "model", "module", "model_state")


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], Path]:
    """The tensors of a weights file or folder (CPU), and the file they came from.

    Raises:
        TowerInitError: no such file, a folder without weights, or a file that holds no tensors.
    """
    path = Path(path)
    if not path.exists():
        raise TowerInitError(f"{path} does not exist (expected a weights file or a folder with model.safetensors)")
    file = weights_file(path) if path.is_dir() else path
    if file.name.endswith(".index.json"):
        shards = sorted(set(_read_json(file).get("weight_map", {}).values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_file(file.parent / shard))
    else:
        state = _read_file(file)
    state = unwrap(state)
    if not state:
        raise TowerInitError(f"{file} holds no tensors")
    return state, file


def weights_file(folder: Path) -> Path:
    """The weights file of a Hugging Face style folder."""
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if len(found) == 1:
        return found[0]
    listing = ", ".join(p.name for p in found) or "none"
    raise TowerInitError(f"{folder} has no {' / '.join(FOLDER_FILES[::2])}; weights files there: {listing}")


def read_config(path: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a folder (or beside a file), or None."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    return _read_json(config) if config.is_file() else None


def _read_json(file: Path) -> dict[str, Any]:
    """A JSON object from ``file``; a :class:`TowerInitError` naming the file when it is anything else."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TowerInitError(f"{file} is not readable JSON ({err}); download or copy it again") from None
    if not isinstance(value, dict):
        raise TowerInitError(f"{file} holds a JSON {type(value).__name__}, not an object")
    return value


def _read_file(file: Path) -> dict[str, Any]:
    if (problem := weights_file_problem(file)) is not None:
        raise TowerInitError(problem)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # BEiT/DeiT checkpoints keep their args
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TowerInitError(f"{file} holds pickled Python objects besides tensors, which vlkit does not unpickle; "
                             "re-save only its weights (`torch.save(ckpt['model'], 'weights.pth')`) or as "
                             f"safetensors ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as err:  # a truncated or corrupt archive: the file is the user's input
        raise TowerInitError(f"{file} is not a readable PyTorch file ({str(err).splitlines()[0]}); "
                             "download or copy it again") from None
    if not isinstance(loaded, dict):
        raise TowerInitError(f"{file} holds a {type(loaded).__name__}, not a state dict")
    return loaded


SAFETENSORS_MAX_HEADER = 100_000_000
"""Bytes of a safetensors header (its JSON table of tensors); the format's own limit."""


def weights_file_problem(file: Path) -> str | None:
    """What makes ``file`` unreadable as weights, found from its first bytes and its header alone (None:
    nothing found). ``.safetensors``: the 8-byte header length, the JSON table and every tensor's byte range
    inside the file; PyTorch files: a zip archive whose directory reads (``torch.save``), or a legacy pickle."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(8)
            if file.suffix == ".safetensors":
                return _safetensors_problem(file, handle, head, size)
    except OSError as err:
        return f"{file} cannot be read ({err.strerror})"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(file) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            return f"{file} is a damaged archive ({err}); download or copy it again"
        return None
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return None
    return (f"{file} is not a weights file ({size} bytes, neither a torch.save archive nor a safetensors file); "
            "check the path")


def _safetensors_problem(file: Path, handle: Any, head: bytes, size: int) -> str | None:
    """See :func:`weights_file_problem`; ``head`` is the file's first 8 bytes."""
    fix = "download or copy it again, or save it anew with safetensors.torch.save_file"
    if len(head) < 8:
        return f"{file} is not a safetensors file ({size} bytes, shorter than its 8-byte header length); {fix}"
    length = int.from_bytes(head, "little")
    if length > min(SAFETENSORS_MAX_HEADER, size - 8):
        return f"{file} is not a safetensors file (its header claims {length:,} bytes of {size:,}); {fix}"
    try:
        table = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{file} is not a safetensors file (its header is not JSON); {fix}"
    if not isinstance(table, dict):
        return f"{file} is not a safetensors file (its header is not a table of tensors); {fix}"
    data = size - 8 - length
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            return f"{file} is truncated or damaged (tensor `{name[:60]}` lies outside its {data:,} data bytes); {fix}"
    return None


def unwrap(state: dict[str, Any]) -> dict[str, Tensor]:
    """The weights of a (possibly nested) checkpoint: descend into ``state_dict`` / ``model`` /
    ``module`` while the mapping is not itself a state dict, keep the tensors, drop a DDP ``module.``
    prefix."""
    while not _is_state_dict(state):
        inner = next((state[k] for k in _NESTING if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _is_state_dict(state: dict[str, Any]) -> bool:
    return bool(state) and sum(isinstance(v, Tensor) for v in state.values()) > len(state) // 2


def strip_prefix(state: dict[str, Tensor], anchor: str) -> tuple[dict[str, Tensor], str]:
    """Re-root ``state`` at the prefix under which ``anchor`` (e.g. ``patch_embed.proj.weight``)
    sits, when it is not at the top (``bert.``, ``visual_encoder.``); keys outside the prefix are kept
    unchanged (they end up unused). Returns the state and the prefix (``""`` when none)."""
    if anchor in state:
        return state, ""
    prefixes = sorted({k[: -len(anchor)] for k in state if k.endswith("." + anchor)}, key=len)
    if not prefixes:
        return state, ""
    prefix = prefixes[0]
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}, prefix
