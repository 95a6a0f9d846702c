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
        shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
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
    return json.loads(config.read_text()) if config.is_file() else None


def _read_file(file: Path) -> dict[str, Any]:
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
    if not isinstance(loaded, dict):
        raise TowerInitError(f"{file} holds a {type(loaded).__name__}, not a state dict")
    return loaded


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
