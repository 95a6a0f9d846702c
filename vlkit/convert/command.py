"""``vlkit convert``: official ALBEF / VLMo checkpoints → vlkit checkpoints, and back (``--to official``)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

import vlkit.convert.albef as albef
import vlkit.convert.vlmo as vlmo
from vlkit.convert.engine import ConversionError, to_official, to_vlkit
from vlkit.convert.io import load_official, save_official, save_vlkit
from vlkit.convert.layout import Layout
from vlkit.convert.report import Accounting
from vlkit.convert.target import Target
from vlkit.encoders.albef import AlbefConfig
from vlkit.encoders.base import EncoderConfig
from vlkit.encoders.mome import MomeConfig
from vlkit.recipe import Recipe, resolve, validate_recipe
from vlkit.recipe_yaml import load_text
from vlkit.weights.init_from import find_checkpoint, read_checkpoint

log = logging.getLogger("vlkit.convert")

FAMILIES = ("albef", "vlmo")
DEFAULT_RECIPES = {"albef": "albef/base", "vlmo": "vlmo/base"}
ENCODERS: dict[str, type[EncoderConfig]] = {"albef": AlbefConfig, "vlmo": MomeConfig}


@dataclass
class Converted:
    """The outcome of a conversion: the written file and the accounting (also written beside it)."""

    path: Path
    accounting: Accounting
    state: dict[str, Tensor]


def _recipe(family: str, ref: str | None, overrides: list[str]) -> tuple[Recipe, str]:
    name = ref or DEFAULT_RECIPES[family]
    recipe = resolve(name, overrides).recipe
    if not isinstance(recipe.encoder, ENCODERS[family]):
        wanted = "an albef" if family == "albef" else "a mome"
        raise ConversionError(f"recipe {name} does not fit {family}", [
            f"its encoder is `{recipe.encoder.type}`; {family} checkpoints need {wanted} encoder"])
    return recipe, name + (" " + " ".join(overrides) if overrides else "")


def _layout(family: str, target: Target, name: str) -> Layout:
    return albef.albef_layout(name, target) if family == "albef" else vlmo.vlmo_layout(target)


def official_to_vlkit(family: str, checkpoint: str | Path, out: str | Path, *, recipe: str | None = None,
                      overrides: list[str] | None = None, layout: str | None = None) -> Converted:
    """Convert an official checkpoint into ``out/checkpoints/step_00000000.pt`` for the recipe's model.

    Args:
        family: ``albef`` or ``vlmo``.
        checkpoint: the official file.
        out: output folder (also gets ``recipe.yaml``, ``conversion.json`` and ``conversion.md``).
        recipe: the recipe whose model the weights are for (default: the family's base recipe).
        overrides: dotted recipe overrides.
        layout: ALBEF layout (default: detected from the keys).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family `{family}`; choose one of {', '.join(FAMILIES)}")
    source, where = load_official(checkpoint)
    log.info("%s: %d tensors from %s", checkpoint, len(source), where)
    resolved, recipe_name = _recipe(family, recipe, list(overrides or []))
    hint = albef.class_count(source) if family == "albef" else vlmo.class_count(source)
    target = Target.build(resolved, num_classes=hint)
    name = layout or (albef.detect_layout(source) if family == "albef" else "vlmo")
    plan = _layout(family, target, name)
    acc = Accounting("official → vlkit", family, plan.name, str(checkpoint), recipe_name)
    if family == "vlmo" and (advice := vlmo.token_type_hint(source, target)):
        raise ConversionError(f"{checkpoint} does not convert to the recipe's model", [advice])
    state = to_vlkit(source, plan, target, acc)
    folder = Path(out)
    path = save_vlkit(folder, state, resolved.to_yaml(),
                      {"family": family, "layout": plan.name, "checkpoint": str(checkpoint)})
    acc.write(folder)
    return Converted(path, acc, state)


def _stored_recipe(state: dict, overrides: list[str]) -> Recipe | None:
    text = state.get("recipe")
    if not isinstance(text, str):
        return None
    if not overrides:
        return validate_recipe(load_text(text, "the checkpoint's recipe")[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(text)
        return resolve(path, overrides).recipe


def vlkit_to_official(family: str, checkpoint: str | Path, out: str | Path, *, recipe: str | None = None,
                      overrides: list[str] | None = None, layout: str | None = None) -> Converted:
    """Convert a vlkit checkpoint (file or run folder) to the official layout in ``out``.

    The recipe is ``recipe`` if given, else the one stored in the checkpoint; the ALBEF layout is
    ``layout`` if given, else the one the checkpoint was converted from, else the model's own
    (:func:`vlkit.convert.albef.layout_of_model`).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family `{family}`; choose one of {', '.join(FAMILIES)}")
    path = find_checkpoint(checkpoint)
    loaded = read_checkpoint(path)
    state: dict[str, Tensor] = loaded["model"]
    overrides = list(overrides or [])
    stored = None if recipe else _stored_recipe(loaded, overrides)
    if stored is not None:
        resolved, recipe_name = stored, f"stored in {path}" + (" " + " ".join(overrides) if overrides else "")
    else:
        resolved, recipe_name = _recipe(family, recipe, overrides)
    target = Target.build(resolved, num_classes=_class_count(state))
    origin = loaded.get("converted_from") or {}
    if family == "albef":
        name = layout or (origin.get("layout") if origin.get("family") == "albef" else None)
        name = name or albef.layout_of_model(target)
    else:
        name = "vlmo"
    plan = _layout(family, target, name)
    acc = Accounting("vlkit → official", family, plan.name, str(path), recipe_name)
    official = to_official(state, plan, target, acc)
    written = save_official(Path(out), family, plan.name, official)
    acc.write(Path(out))
    return Converted(written, acc, official)


def _class_count(state: dict[str, Tensor]) -> int | None:
    """Classes of a classification head in a vlkit state (its last ``head.net`` layer), if any."""
    rows = [(int(k.split(".")[-2]), v.shape[0]) for k, v in state.items()
            if k.startswith("objectives.") and ".head.net." in k and k.endswith(".weight") and v.ndim == 2]
    return max(rows)[1] if rows else None
