"""Released weights: ``model.safetensors`` with the resolved recipe in its metadata.

A training checkpoint (``checkpoints/step_N.pt``) is a pickle, read with ``weights_only=True``; the
weights file beside it is plain safetensors, which loads without unpickling anything and is what a
released vlkit model should be. It holds the model's full state dict (teacher copies and queues
included, so ``init_from`` continues pre-training exactly) and, as string metadata:

- ``format`` (``vlkit-weights``) and ``version``;
- ``recipe``: the resolved recipe (YAML) the weights were trained with;
- ``step`` and ``samples``: the training position they were written at;
- ``aliases``: tied weights (BERT's MLM decoder is the word-embedding matrix) are stored once; this
  JSON map names each dropped key and the stored key it shares storage with;
- ``converted_from`` (JSON, optional): the official checkpoint and layout ``vlkit convert`` read.

A weights file is never written with NaN or infinite values (:class:`~vlkit.core.errors.NonFiniteError`),
and is written like a checkpoint (:func:`vlkit.weights.checkpoints.create_temp`: a temporary file with
the run's file mode, renamed into place).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlkit.core.errors import CheckpointError
from vlkit.weights.checkpoints import create_temp, require_finite

FORMAT = "vlkit-weights"
VERSION = 1
FILE_NAME = "model.safetensors"


def _identity(tensor: Tensor) -> tuple[int, int | torch.SymInt, tuple[int, ...], tuple[int, ...], torch.dtype]:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
            tensor.dtype)


def deduplicate(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Store each tied tensor once.

    Returns:
        the tensors to write (contiguous copies on the CPU) and ``{dropped key: kept key}`` for keys
        that are the very same view of one storage as a kept key.
    """
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name, tensor in state.items():
        identity = _identity(tensor)
        if tensor.numel() and identity in first_of:
            aliases[name] = first_of[identity]
            continue
        if tensor.numel():
            first_of[identity] = name
        kept[name] = tensor.detach().to("cpu", copy=True).contiguous()  # a copy: no storage shared with anything
    return kept, aliases


def save_weights(path: Path, state: dict[str, Tensor], *, recipe_yaml: str, step: int, samples: int,
                 converted_from: dict[str, str] | None = None) -> Path:
    """Write ``state`` (a model state dict) and its metadata to ``path`` atomically.

    Raises:
        NonFiniteError: a floating tensor of ``state`` is NaN or infinite; nothing is written.
    """
    from safetensors.torch import save_file

    require_finite(state, f"weights file {path}")
    tensors, aliases = deduplicate(state)
    metadata = {"format": FORMAT, "version": str(VERSION), "recipe": recipe_yaml, "step": str(int(step)),
                "samples": str(int(samples)), "aliases": json.dumps(aliases, sort_keys=True)}
    if converted_from:
        metadata["converted_from"] = json.dumps(converted_from, sort_keys=True)
    fd, tmp = create_temp(path)
    mode = os.fstat(fd).st_mode & 0o777  # 0o666 less the umask, as the run's other files
    os.close(fd)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes the file anew, private (0600)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})


def load_weights(path: Path) -> dict[str, Any]:
    """A vlkit weights file as a checkpoint-like dict: ``model`` (every key, tied ones restored as
    shared tensors), ``step``, ``samples``, ``recipe`` and, if present, ``converted_from``.

    Raises:
        ValueError: the file is not a vlkit weights file (e.g. a plain Hugging Face ``model.safetensors``).
    """
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise CheckpointError(f"{path} is a safetensors file without vlkit's metadata (format={found!r}); to start a "
                              "tower from it use encoder.image.init / encoder.text.init instead of init_from")
    if int(metadata.get("version", "0")) > VERSION:
        raise CheckpointError(f"{path} is vlkit weights version {metadata['version']}; this vlkit reads up to "
                              f"{VERSION}")
    state = load_file(str(path), device="cpu")
    for alias, owner in json.loads(metadata.get("aliases", "{}")).items():
        if owner not in state:
            raise CheckpointError(f"{path}: tied key {alias} refers to {owner}, which the file does not hold")
        state[alias] = state[owner]
    loaded: dict[str, Any] = {"model": state, "step": int(metadata.get("step", 0)),
                              "samples": int(metadata.get("samples", 0)), "recipe": metadata.get("recipe")}
    if "converted_from" in metadata:
        loaded["converted_from"] = json.loads(metadata["converted_from"])
    return loaded
