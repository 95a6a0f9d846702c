"""Where a tower's pre-trained weights come from: a timm model name, a Hugging Face hub repository or a
local file / folder, as written in a recipe's ``init`` keys (the typed field :class:`WeightSource`).

Spellings:

- ``timm:<model>`` (``timm:deit_base_patch16_224``, ``timm:deit_base_patch16_224.fb_in1k``,
  ``timm:hf-hub:timm/<repo>``): the weights ``timm.create_model(model, pretrained=True)`` loads.
- ``hf:<repo>`` or a bare ``<repo>`` that is not a local path (``bert-base-uncased``): a Hugging Face
  hub repository (text towers only).
- a path (``~`` and ``$VARS`` expanded): a weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``,
  ``.ckpt``) or a folder holding ``model.safetensors`` / ``pytorch_model.bin`` (and ``config.json``).

This module only parses and checks spellings (timm is imported only to check a timm name); the loaders
live in :mod:`vlkit.weights`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TIMM_PREFIX = "timm:"
HUB_PREFIX = "hf:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

SourceKind = Literal["timm", "hub", "path"]
Tower = Literal["image", "text"]


@dataclass(frozen=True)
class Source:
    """A parsed ``init`` value.

    Attributes:
        kind: ``timm`` (a timm model name), ``hub`` (a Hugging Face repository) or ``path``.
        name: the model name, repository id or expanded path.
        text: the value as the recipe wrote it.
    """

    kind: SourceKind
    name: str
    text: str

    @property
    def path(self) -> Path:
        """The local path (``kind == "path"`` only)."""
        return Path(self.name)


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~", "$")) or text.endswith(WEIGHT_SUFFIXES)
            or (os.sep in text and Path(text).parent.exists()))


def parse_source(text: str, tower: Tower) -> Source:
    """Parse an ``init`` value for an ``image`` tower (timm name or path) or a ``text`` tower (hub
    repository or path). A value that exists on disk is always a path."""
    if text.startswith(TIMM_PREFIX):
        return Source("timm", text[len(TIMM_PREFIX):], text)
    if text.startswith(HUB_PREFIX):
        return Source("hub", text[len(HUB_PREFIX):], text)
    expanded = os.path.expandvars(os.path.expanduser(text))
    if Path(expanded).exists() or _looks_like_path(text) or tower == "image":
        return Source("path", expanded, text)
    return Source("hub", text, text)


def source_problem(text: str, tower: Tower) -> str | None:
    """What is wrong with an ``init`` value at validation time (None: nothing found). Paths are not
    checked here (a recipe may be validated on another machine than the one that trains); timm names are."""
    if not text.strip():
        return "is empty; use a path, `timm:<model>` (image) or a Hugging Face repository (text)"
    source = parse_source(text, tower)
    if source.kind == "timm":
        if tower == "text":
            return f"`{text}`: a text tower starts from a BERT checkpoint (a folder or a hub repository), not timm"
        return timm_name_problem(source.name)
    if source.kind == "hub" and tower == "image":
        return f"`{text}`: image towers start from `timm:<model>` or a local file / folder"
    if source.kind == "path" and tower == "image" and not Path(source.name).exists() and not _looks_like_path(text):
        hint = f"; for the timm model write `timm:{text}`" if timm_name_problem(text) is None else ""
        return f"`{text}` is neither a local file / folder nor `timm:<model>`{hint}"
    return None


def timm_name_problem(name: str) -> str | None:
    """None when timm knows ``name`` (with or without a pretrained tag, or an ``hf-hub:`` repository)."""
    import timm

    if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name):
        return None
    close = difflib.get_close_matches(name.partition(".")[0], timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(f'`timm:{c}`' for c in close)}?" if close else ""
    return f"`{name}` is not a timm model{hint}"


def tower_init_problem(init: str | None, tower: Tower, stem: str = "patch") -> str | None:
    """What is wrong with a tower's ``init`` key in a recipe (None when nothing is found); ``stem`` is
    the image tower's patch embedding (ViT checkpoints need the linear ``patch`` stem)."""
    if init is None:
        return None
    if tower == "image" and stem != "patch":
        return f"ViT checkpoints have a linear patch embedding; with `init` the stem must be `patch`, not `{stem}`"
    return source_problem(init, tower)


class WeightSource(str):
    """A recipe's ``init`` value (a string, typed): where a tower's weights come from. :meth:`source` parses
    it for a tower; :meth:`problem` says what is wrong with it at recipe-check time."""

    def source(self, tower: Tower) -> Source:
        """The parsed source for an ``image`` or ``text`` tower."""
        return parse_source(str(self), tower)

    def problem(self, tower: Tower, stem: str = "patch") -> str | None:
        """What is wrong with this value for ``tower`` (None when nothing is found); ``stem`` is the image
        tower's patch embedding (ViT checkpoints need the linear ``patch`` stem)."""
        if tower == "image" and stem != "patch":
            return f"ViT checkpoints have a linear patch embedding; with `init` the stem must be `patch`, not `{stem}`"
        return source_problem(str(self), tower)
