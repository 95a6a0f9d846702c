"""Reading official checkpoints safely and writing the converted files.

Official files are read with ``torch.load(weights_only=True)``: tensors and plain containers only.
Training scripts often pickle other objects beside the weights (an ``argparse.Namespace`` config,
Lightning's hyper-parameters); such a file is refused with a command that keeps only its weights
(run by the user, in a Python they trust): vlkit never unpickles code from data.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release

log = logging.getLogger("vlkit.convert")

CONTAINERS = ("state_dict", "module", "model")
"""Where official files keep the weights: Lightning, DeepSpeed, ALBEF / generic; else a raw dict."""


class UnsafeCheckpoint(ValueError):
    """The file holds Python objects that ``weights_only`` loading refuses."""


def load_official(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The state dict of an official checkpoint and where in the file it was (``model``, ``state_dict``, ...).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpoint: the file needs full unpickling (vlkit never unpickles code from data).
        ValueError: no dictionary of tensors found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                     lines[0] if lines else type(err).__name__)
        raise UnsafeCheckpoint(
            f"{path} holds Python objects besides tensors (e.g. the argparse `config` or Lightning hyper-parameters "
            f"that training scripts save), which safe loading (torch.load(weights_only=True)) refuses: {first}\n"
            "Either keep only the weights once, in a Python you trust:\n"
            f"  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save({{k: c[k] for k in ('model', 'state_dict', 'module') if k in c}}, '{path}.weights.pt')\"\n"
            "and convert that file."
        ) from None
    return find_state_dict(obj, str(path))


def find_state_dict(obj: Any, name: str) -> tuple[dict[str, Tensor], str]:
    """The weights inside a loaded checkpoint object, with DeepSpeed's ``module.`` prefix removed."""
    where = "the file itself"
    if isinstance(obj, dict):
        for container in CONTAINERS:
            inner = obj.get(container)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj, where = inner, f"['{container}']"
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{name}: no state dict found (looked in {', '.join(CONTAINERS)} and the top level)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    others = sorted(k for k in obj if k not in tensors)
    if not tensors or (others and where == "the file itself"):
        raise ValueError(f"{name}: no state dict found (top-level entries: {', '.join(map(str, list(obj)[:8]))}; "
                         f"expected one of {', '.join(CONTAINERS)} or a dict of tensors)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
        where += " (prefix `module.` removed)"
    return tensors, where


def save_vlkit(folder: Path, state: dict[str, Tensor], recipe_yaml: str, converted_from: dict[str, str]) -> Path:
    """A vlkit checkpoint that ``init_from: folder`` and ``vlkit eval --checkpoint folder`` read:
    ``folder/checkpoints/step_00000000.pt`` (format of :mod:`vlkit.train.checkpoint`: model weights,
    step 0, the recipe), the same weights as ``folder/model.safetensors`` (:mod:`vlkit.weights.release`),
    and ``folder/recipe.yaml``."""
    path = ckpt.checkpoint_path(folder / "checkpoints", 0)
    ckpt.save_atomic({"step": 0, "samples": 0, "model": state, "recipe": recipe_yaml,
                      "converted_from": converted_from}, path)
    release.save_weights(folder / release.FILE_NAME, state, recipe_yaml=recipe_yaml, step=0, samples=0,
                              converted_from=converted_from)
    (folder / "recipe.yaml").write_text(recipe_yaml)
    return path


def save_official(folder: Path, family: str, layout: str, state: dict[str, Tensor]) -> Path:
    """``folder/albef_<layout>.pth`` (``{'model': ...}``, as ALBEF's scripts read it) or
    ``folder/vlmo.ckpt`` (``{'state_dict': ...}``, as VLMo's Lightning loader reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if family == "albef":
        path, obj = folder / f"albef_{layout}.pth", {"model": state}
    else:
        path, obj = folder / "vlmo.ckpt", {"state_dict": state}
    torch.save(obj, path)
    return path
