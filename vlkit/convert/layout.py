"""One official checkpoint layout, as the conversion engine sees it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vlkit.convert.rules import Drop, Refuse, Rule, nothing_refused

Resize = Callable[[str, Tensor, torch.Size], "tuple[Tensor, str] | None"]
"""``(vlkit key, tensor, wanted shape)`` → the tensor reshaped for the recipe and a note, or None."""

Derive = Callable[[dict[str, Tensor]], "list[tuple[str, Tensor, str]]"]
"""Exported official keys → official keys vlkit does not store but can recreate (key, tensor, how)."""


def _no_resize(key: str, value: Tensor, shape: torch.Size) -> tuple[Tensor, str] | None:
    return None


def _nothing_derived(state: dict[str, Tensor]) -> list[tuple[str, Tensor, str]]:
    return []


def first_component(key: str) -> str:
    """``visual_encoder_m.blocks.0.norm1.weight`` → ``visual_encoder_m``."""
    return key.split(".", 1)[0]


@dataclass
class Layout:
    """An official layout bound to a target recipe's names.

    Attributes:
        family: ``albef`` or ``vlmo``.
        name: the layout (ALBEF: ``pretrain``, ``retrieval``, ``vqa``, ``nlvr2``; VLMo: ``vlmo``).
        rules: renames, first match wins (official → vlkit and back).
        drops: official keys vlkit does not keep, with the reason (checked before the rules).
        group: official key → the part of the checkpoint it belongs to (``visual_encoder_m``); a key
            the recipe needs from a part the checkpoint lacks entirely is initialized and reported,
            one missing from a part it has is an error.
        resize: reshapes a tensor for another resolution or text length (position tables).
        derive: recreates dropped official keys on export (e.g. ``position_ids``).
        refuse: vlkit weights the official layout cannot hold (export fails, naming them, instead of
            writing keys the official code cannot load).
    """

    family: str
    name: str
    rules: list[Rule]
    drops: list[Drop] = field(default_factory=list)
    group: Callable[[str], str] = first_component
    resize: Resize = _no_resize
    derive: Derive = _nothing_derived
    refuse: Refuse = nothing_refused

    @property
    def title(self) -> str:
        return f"official {self.family.upper() if self.family == 'albef' else 'VLMo'} `{self.name}` layout"
