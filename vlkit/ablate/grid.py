"""Ablation grids: a base recipe, shared overrides, named variants, seeds and follow-up evaluations.

A grid file (YAML, read with a safe loader)::

    description: "ALBEF's objective ablation"
    base: albef/tiny                  # a shipped recipe name or a path (relative to the grid file)
    overrides: {train.steps: 600}     # for every variant: a mapping of dotted keys, or KEY=VALUE strings
    seeds: [0, 1]                     # optional: one run per seed (default: the recipe's seed)
    metrics: [txt_r1, img_r1, r_mean] # optional: the report's columns (default: every metric)
    variants:
      mlm_itm:       {objectives.itc: null, objectives.itm.negatives: random}
      full: {}                        # the base recipe itself
      mome: {base: vlmo/tiny, encoder.mlp_ratio: 3.5}   # a variant may start from another recipe
    followups:                        # optional: evaluations run from each variant's final checkpoint
      vqa: {recipe: finetune/albef/vqa_tiny, overrides: {train.steps: 200}, metrics: [vqa_acc]}

Every variant's recipe (and every follow-up's) is resolved and validated when the grid loads, so a
wrong key stops the grid before any training, naming the variant and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlkit.recipe import Recipe, find_recipe, load_yaml_file, resolve

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

GRID_FORMAT_HELP = """\
grid file (YAML; keys other than these are refused):
  description: "ALBEF's objective ablation"   # optional: the title of results.md
  base: albef/tiny                  # required: a shipped recipe name, or a path (relative to the grid file)
  overrides: {train.steps: 600}     # optional, every variant: {dotted.key: value} or [KEY=VALUE, ...]
  seeds: [0, 1]                     # optional: one run per seed (default: the recipe's seed, one run)
  metrics: [txt_r1, img_r1, r_mean] # optional: the table's columns (default: every metric but counts)
  variants:                         # required, at least one: name (letters, digits, _ - .) -> overrides
    mlm_itm: {objectives.itc: null, objectives.itm.negatives: random}   # null removes an objective
    full: {}                        # the base recipe itself
    mome: {base: vlmo/tiny, encoder.mlp_ratio: 3.5}   # `base` here: this variant starts from another recipe
  followups:                        # optional: run from each variant's final checkpoint (init_from, same seed)
    vqa: {recipe: finetune/albef/vqa_tiny, overrides: {train.steps: 200}, metrics: [vqa_acc]}

Every variant's and follow-up's recipe is resolved and checked when the grid loads, before any training
(a wrong key names the variant and the nearest valid keys). Runs go to DIR/runs/<variant>/seed<k>/
(follow-ups in .../<followup>/); finished runs are skipped and interrupted ones resumed, so the same
command continues a grid. After each run the report is redrawn: results.md (mean +- std over seeds, a
chance row, train time and samples/s per variant; bold only where the best mean's +-1 std range clears
the runner-up's, with 2 seeds or more), results.csv (one row per run: metrics, timing, provenance),
bars_<metric>.png, curves_loss_<objective>.png (objectives every variant trains; curves_loss.png only
when all train the same ones), curves_<metric>.png (with train.eval_every). Follow-up metrics appear as
<followup>/<metric>. Shipped grids: recipes/ablations/*.yaml. `vlkit ablate --report DIR` redraws.
"""
"""The grid file format for ``vlkit ablate --help`` (an ``epilog`` for ``RawDescriptionHelpFormatter``)."""


class GridError(ValueError):
    """A grid file that cannot be run (its message names the part)."""


@dataclass
class Followup:
    """An evaluation run from each variant's checkpoint (a fine-tuning recipe with ``init_from`` set)."""

    name: str
    recipe: str
    overrides: list[str]
    metrics: list[str] | None = None


@dataclass
class Grid:
    """A parsed grid (see the module docstring)."""

    path: Path
    base: str
    overrides: list[str]
    variants: dict[str, list[str]]
    seeds: list[int] | None = None
    metrics: list[str] | None = None
    followups: list[Followup] = field(default_factory=list)
    description: str = ""
    variant_bases: dict[str, str] = field(default_factory=dict)

    def recipe(self, variant: str, seed: int | None = None) -> Recipe:
        """The validated recipe of ``variant`` (with ``seed`` when given)."""
        extra = [] if seed is None else [f"seed={seed}"]
        base = self.variant_bases.get(variant, self.base)
        return resolve(base, [*self.overrides, *self.variants[variant], *extra]).recipe

    def seeds_of(self, variant: str) -> list[int]:
        return self.seeds if self.seeds is not None else [self.recipe(variant).seed]


def as_overrides(value: Any, where: str) -> list[str]:
    """A mapping ``{dotted.key: value}`` or a list of ``KEY=VALUE`` strings → ``KEY=VALUE`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{key}={yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
                for key, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise GridError(f"{where}: expected a mapping of dotted keys to values, or a list of KEY=VALUE strings")


def _recipe_ref(ref: str, grid_path: Path) -> str:
    """A recipe named in a grid: a path relative to the grid file, else a shipped name or path (checked)."""
    local = grid_path.parent / ref
    if local.is_file():
        ref = str(local)
    find_recipe(ref)
    return ref


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file: every variant and follow-up recipe is resolved and validated."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} not found")
    raw, _ = load_yaml_file(path)  # the recipes' bounds: size, aliases, depth
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid is a mapping with `base` and `variants`")
    known = {"description", "base", "overrides", "seeds", "metrics", "variants", "followups"}
    if unknown := sorted(set(raw) - known):
        raise GridError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if "base" not in raw or not raw.get("variants"):
        raise GridError(f"{path}: a grid needs `base` (a recipe) and at least one entry under `variants`")
    base = _recipe_ref(str(raw["base"]), path)
    variants: dict[str, list[str]] = {}
    variant_bases: dict[str, str] = {}
    for name, value in raw["variants"].items():
        if not NAME.match(str(name)):
            raise GridError(f"{path}: variant name `{name}` must use letters, digits, '_', '-' or '.' only")
        if isinstance(value, dict) and "base" in value:  # this variant starts from another recipe
            value = dict(value)
            variant_bases[str(name)] = _recipe_ref(str(value.pop("base")), path)
        variants[str(name)] = as_overrides(value, f"{path}: variant `{name}`")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds):
        raise GridError(f"{path}: `seeds` must be a non-empty list of integers")
    followups = []
    for name, spec in (raw.get("followups") or {}).items():
        if not isinstance(spec, dict) or "recipe" not in spec:
            raise GridError(f"{path}: follow-up `{name}` needs a `recipe`")
        followups.append(Followup(str(name), str(spec["recipe"]), as_overrides(spec.get("overrides"),
                                                                                f"{path}: follow-up `{name}`"),
                                  spec.get("metrics")))
    grid = Grid(path=path, base=base, overrides=as_overrides(raw.get("overrides"), f"{path}: overrides"),
                variants=variants, seeds=seeds, metrics=raw.get("metrics"), followups=followups,
                description=str(raw.get("description", "")), variant_bases=variant_bases)
    for variant in variants:  # fail before any training
        try:
            grid.recipe(variant)
        except Exception as err:
            raise GridError(f"{path}: variant `{variant}`: {err}") from err
    for followup in followups:
        try:
            resolve(followup.recipe, [*followup.overrides, "init_from=null"])
        except Exception as err:
            raise GridError(f"{path}: follow-up `{followup.name}`: {err}") from err
    return grid
