"""Recipes: YAML files with ``base:`` inheritance, dotted overrides and typed validation.

A recipe is resolved in four steps, all before anything heavy starts:

1. **load**: each file is parsed with a safe YAML loader (YAML 1.2 floats such as ``3e-4``;
   duplicate and non-string keys are an error) within bounds of size, values after alias expansion and
   nesting (:mod:`vlkit.recipe_yaml`), remembering the file and line of every key;
2. **inherit**: ``base:`` (one reference or a list) is resolved depth first, bases merged in order and
   the file on top; a cycle is an error that shows the chain. A reference is a path relative to the
   file (``base: ../albef/tiny.yaml``) or a shipped recipe name (``base: albef/tiny``), as on the command
   line; when both exist the file next to the recipe wins (as in ablation grids), so a shipped name
   never shadows a user's own file;
3. **override**: command-line ``a.b.c=value`` pairs are parsed as YAML values and set on top
   (``objectives.mlm=null`` removes a part, ``train.lr=3e-4`` is a float);
4. **validate**: the merged mapping is checked against the typed schemas (:class:`Recipe` and the
   config dataclasses of the registered parts it names), after importing the plug-in modules listed
   in ``imports:``. Errors name the file and line, the key path and the nearest valid keys.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from vlkit import registry
from vlkit.core.errors import ConfigError
from vlkit.core.ranges import SEED_MAX, check_count
from vlkit.data.config import DataConfig
from vlkit.encoders.base import EncoderConfig
from vlkit.eval.config import EvalConfig
from vlkit.models.momentum import MomentumConfig
from vlkit.objectives.base import ObjectiveConfig
from vlkit.recipe_yaml import MAX_DEPTH, MAX_NODES, count_values, load_file, load_text
from vlkit.schema import Component, ComponentMap, RecipeError, deep_merge, to_dict, validate
from vlkit.train.config import TrainConfig

log = logging.getLogger("vlkit.recipe")
COMMAND_LINE = "command line"

MAX_FILES = 64
"""Recipe files one resolution may load through ``base:`` (each base counted every time it is reached)."""


# --------------------------------------------------------------------------- schema
@dataclass(kw_only=True)
class Recipe:
    """A resolved, validated recipe.

    Attributes:
        description: one line shown by ``vlkit recipes list``.
        imports: plug-in modules imported before validation (they call ``vlkit.register``).
        seed: global random seed.
        encoder: the encoder section, an instance of the registered encoder's config.
        objectives: instance name → objective config; weights live in each config.
        momentum: the momentum (EMA) teacher that queues and distillation read; null: none.
        data: training data and text / image preparation; null for recipes that only build models.
        train: optimization and bookkeeping.
        eval: evaluation at the end of training.
        task: a downstream task (registry kind ``task``): ``vlkit finetune`` trains it (its own heads
            and data, or the recipe's objectives for retrieval) and ``vlkit eval`` evaluates it instead
            of the pre-training evaluation; null: none.
        init_from: a checkpoint file or run folder whose weights initialize the model before training
            (every weight with the same name and shape: encoder, heads, momentum teacher, queues);
            null: random initialization.
        freeze: glob patterns over the model's parameter names (``encoder.transformer.blocks.*.attn.*``)
            whose parameters are not trained; the run logs how many parameters remain trainable.
        strict: every weight load must account for every key: ``init_from`` leaves no model weight
            new or reshaped and no checkpoint weight unused; a tower ``init`` leaves no checkpoint weight
            unused. Off: such keys are reported (log and ``DIR/weights_report.json``) and training goes on.
    """

    description: str = ""
    imports: list[str] = field(default_factory=list)
    seed: int = 0
    encoder: Annotated[EncoderConfig, Component("encoder")]
    objectives: Annotated[dict[str, ObjectiveConfig], ComponentMap("objective")] = field(default_factory=dict)
    momentum: MomentumConfig | None = None
    data: DataConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: Annotated[Any, Component("task")] | None = None
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    strict: bool = False

    def __post_init__(self) -> None:
        check_count("seed", self.seed, low=0, high=SEED_MAX)
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("must name a checkpoint file or run folder (or be null)", key="init_from")
        for index, pattern in enumerate(self.freeze):
            if not pattern.strip():
                raise ConfigError("an empty pattern freezes nothing; remove it", key=f"freeze[{index}]")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, ready for YAML."""
        return to_dict(self)

    def to_yaml(self) -> str:
        """The fully resolved recipe as YAML (every default spelled out)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=1000)


@dataclass
class ResolvedRecipe:
    """The outcome of :func:`resolve`.

    Attributes:
        recipe: the validated recipe.
        raw: the merged mapping before validation (what the files and overrides said).
        sources: the files merged, bases first, then ``command line`` if overrides were given.
        origins: dotted key → the file (and line) or command-line override that set it.
    """

    recipe: Recipe
    raw: dict[str, Any]
    sources: list[str]
    origins: Callable[[str], str] = field(default=lambda key: "")


# --------------------------------------------------------------------------- YAML
def parse_value(text: str) -> Any:
    """A command-line value parsed as YAML (``3e-4`` → float, ``null`` → None, ``[1, 2]`` → list), within
    the bounds of :mod:`vlkit.recipe_yaml`."""
    try:
        return load_text(text, COMMAND_LINE)[0]
    except RecipeError as err:
        raise RecipeError(f"cannot parse value `{registry.shown(text)}`: {err.message}", source=COMMAND_LINE) from None


def _key_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            _key_lines(value_node, key_path, out)


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def load_yaml_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse one recipe file within the bounds of :mod:`vlkit.recipe_yaml`; returns its mapping and the
    line of every dotted key."""
    source = _display(path)
    data, node = load_file(path, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping at the top level", source=_display(path))
    lines: dict[str, int] = {}
    if node is not None:
        _key_lines(node, "", lines)
    return data, lines


# --------------------------------------------------------------------------- provenance
class _Provenance:
    """Which file (and line) set each dotted key; the innermost recorded prefix answers."""

    def __init__(self) -> None:
        self._where: dict[str, str] = {}

    def record(self, data: dict[str, Any], source: str, lines: dict[str, int] | None, path: str = "") -> None:
        for key, value in data.items():
            key_path = f"{path}.{key}" if path else str(key)
            line = (lines or {}).get(key_path)
            self._where[key_path] = f"{source}:{line}" if line else source
            if isinstance(value, dict):
                self.record(value, source, lines, key_path)

    def mark(self, path: str, value: Any, source: str) -> None:
        """Record that ``source`` set ``path`` (and everything below it when ``value`` is a mapping)."""
        self._where[path] = source
        if isinstance(value, dict):
            self.record(value, source, None, path)

    def __call__(self, path: str) -> str:
        path = re.sub(r"\[\d+\]", "", path)
        while path:
            if path in self._where:
                return self._where[path]
            path = path.rpartition(".")[0]
        return ""


# --------------------------------------------------------------------------- inheritance
def _bases(data: dict[str, Any], path: Path, lines: dict[str, int]) -> list[Path]:
    base = data.pop("base", None)
    if base is None:
        return []
    where = f"{_display(path)}:{lines['base']}" if "base" in lines else _display(path)
    items = [base] if isinstance(base, str) else base
    if not isinstance(items, list) or not all(isinstance(b, str) for b in items):
        raise RecipeError("`base` must be a path, a shipped recipe name or a list of them", source=where, key="base")
    return [_base_file(ref, path, where) for ref in items]


def _base_file(ref: str, path: Path, where: str) -> Path:
    """A ``base:`` reference of the recipe file ``path``: a file relative to its folder first, else a
    shipped recipe (``albef/tiny``, ``albef/tiny.yaml``); neither names both places looked in."""
    local = path.parent / ref
    if ref.strip() and local.is_file():
        return local.resolve()
    if not ref.strip():
        raise RecipeError("`base` is empty; name a recipe file or a shipped recipe", source=where, key="base")
    looked = _display(Path(os.path.normpath(path.parent / registry.shown(ref))))
    if not _shipped_like(ref):  # ../x.yaml, /abs/x.yaml: a path only
        raise RecipeError(f"base recipe `{registry.shown(ref)}` does not exist: looked for {looked} "
                          "(relative to the recipe's folder)", source=where, key="base")
    shipped = _shipped_file(ref)
    if shipped is not None:
        return shipped
    name = ref.removesuffix(".yaml")
    close = registry.nearest(name[: registry.MAX_NAME_SHOWN], shipped_recipe_names())
    hint = ("; did you mean " + " or ".join(f"`{c}`" for c in close) + "?" if close
            else "; `vlkit recipes list` shows the shipped recipes")
    raise RecipeError(f"base recipe `{registry.shown(ref)}` does not exist: looked for {looked} (relative "
                      f"to the recipe's folder) and for a shipped recipe `{registry.shown(name)}` in "
                      f"{_display(shipped_recipes_dir())}{hint}", source=where, key="base")


def _shipped_like(ref: str) -> bool:
    """A reference that could be a shipped name (``family/name``), not a path out of the folder."""
    return not ref.startswith((".", "/", "~")) and "\\" not in ref


def _load_tree(path: Path, prov: _Provenance, stack: tuple[Path, ...], sources: list[str]) -> dict[str, Any]:
    if len(sources) + len(stack) > MAX_FILES:
        raise RecipeError(f"`base` inheritance loads more than {MAX_FILES} files", source=_display(stack[-1]),
                          key="base")
    if path in stack:
        chain = " → ".join(_display(p) for p in (*stack, path))
        raise RecipeError(f"`base` inheritance cycle: {chain}", source=_display(stack[-1]), key="base")
    if not path.is_file():
        where = _display(stack[-1]) if stack else ""
        raise RecipeError(f"base recipe `{_display(path)}` does not exist", source=where, key="base")
    data, lines = load_yaml_file(path)
    merged: dict[str, Any] = {}
    for base_path in _bases(data, path, lines):
        merged = deep_merge(merged, _load_tree(base_path, prov, (*stack, path), sources))
    prov.record(data, _display(path), lines)
    sources.append(_display(path))
    return deep_merge(merged, data)


# --------------------------------------------------------------------------- overrides
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def is_override(text: str) -> bool:
    """Whether ``text`` has the form of an override (``a.b.c=value``, the key as :func:`parse_override`
    reads it): the command line tells overrides from option values with it."""
    key, sep, _ = text.partition("=")
    return bool(sep) and _OVERRIDE_KEY.match(key.strip()) is not None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` → (["a", "b"], 3)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_KEY.match(key):
        raise RecipeError(f"override `{registry.shown(text)}` is not of the form key.path=value", source=COMMAND_LINE)
    keys = key.split(".")
    if len(keys) > MAX_DEPTH:
        raise RecipeError(f"override `{registry.shown(key)}` is more than {MAX_DEPTH} keys deep", source=COMMAND_LINE)
    return keys, parse_value(value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], prov: _Provenance) -> dict[str, Any]:
    """Set each ``a.b.c=value`` on a copy of ``data``; intermediate mappings are created."""
    out = deep_merge({}, data)
    for text in overrides:
        keys, value = parse_override(text)
        source = f"{COMMAND_LINE} ({text})"
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
                prov.mark(".".join(keys[: depth + 1]), child, source)
            if not isinstance(child, dict):
                parent = ".".join(keys[: depth + 1])
                raise RecipeError(
                    f"cannot set `{'.'.join(keys)}`: `{parent}` is `{registry.shown(str(child))}`, not a mapping; "
                    f"set it whole instead, e.g. {parent}='{{type: {registry.shown(str(child))}, ...}}'",
                    source=COMMAND_LINE, key=parent,
                )
            node = child
        if keys[-1] == "type" and node.get("type") not in (None, value):
            if dropped := sorted(k for k in node if k != "type"):  # another registered part: the old
                parent = ".".join(keys[:-1])                         # part's settings do not apply to it
                log.warning("%s: `%s` changes from %s to %s, which drops its other settings (%s); set them "
                            "together, e.g. %s='{type: %s, %s: ...}'", source, parent, node["type"], value,
                            ", ".join(dropped), parent, value, dropped[0])
            node.clear()
        node[keys[-1]] = value
        prov.mark(".".join(keys), value, source)
    return out


# --------------------------------------------------------------------------- shipped recipes
def shipped_recipes_dir() -> Path:
    """The folder of recipes that ship with vlkit (the checkout's ``recipes/`` or the installed copy)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "recipes", here / "_recipes"):
        if candidate.is_dir():
            return candidate
    return here.parent / "recipes"


GRID_FOLDERS = ("ablations",)
"""Folders of ``recipes/`` that hold ablation grids (``vlkit ablate``), not recipes."""


def shipped_recipe_names() -> list[str]:
    """Shipped recipes as ``family/name`` (e.g. ``albef/tiny``); ablation grids are not listed."""
    root = shipped_recipes_dir()
    names = (p.relative_to(root) for p in root.rglob("*.yaml"))
    return sorted(str(p.with_suffix("")) for p in names if p.parts[0] not in GRID_FOLDERS)


def _shipped_file(ref: str | os.PathLike[str]) -> Path | None:
    """The shipped recipe ``ref`` names (``albef/tiny`` or ``albef/tiny.yaml``), if there is one."""
    if not str(ref).strip():
        return None
    root = shipped_recipes_dir()
    for candidate in (root / ref, root / f"{ref}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def find_recipe(ref: str | os.PathLike[str]) -> Path:
    """A recipe file from a path, or from a shipped name such as ``albef/tiny`` (a file wins)."""
    path = Path(ref)
    if path.is_file():
        return path.resolve()
    shipped = _shipped_file(ref)
    if shipped is not None:
        return shipped
    names = shipped_recipe_names()
    raise RecipeError(f"recipe `{ref}` not found (neither a file nor a shipped recipe)"
                      f"{registry.did_you_mean(str(ref).removesuffix('.yaml').removeprefix('recipes/'), names)}")


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe; the description is the file's own line."""
    root = shipped_recipes_dir()
    out = []
    for name in shipped_recipe_names():
        try:
            data, _ = load_yaml_file(root / f"{name}.yaml")
            description = str(data.get("description", "")).strip() or "(no description)"
        except RecipeError as err:
            description = f"(unreadable: {err.message})"
        out.append((name, description))
    return out


# --------------------------------------------------------------------------- entry points
def resolve_raw(ref: str | os.PathLike[str],
                overrides: Sequence[str] = ()) -> tuple[dict[str, Any], _Provenance, list[str]]:
    """Load, inherit and override without validating: (mapping, provenance, source files)."""
    path = find_recipe(ref)
    prov = _Provenance()
    sources: list[str] = []
    data = _load_tree(path, prov, (), sources)
    if overrides:
        data = apply_overrides(data, overrides, prov)
        sources.append(COMMAND_LINE)
    if count_values(data) > MAX_NODES:
        raise RecipeError(f"the merged recipe holds more than {MAX_NODES:,} values; a recipe has a few hundred",
                          source=" <- ".join(reversed(sources)))
    return data, prov, sources


def import_recipe_plugins(data: dict[str, Any], origins: Any = None) -> list[str]:
    """Import the plug-in modules a resolved mapping lists under ``imports:``; returns their names."""
    origins = origins or (lambda path: "")
    imports = data.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise RecipeError("`imports` must be a list of module names", source=origins("imports"), key="imports")
    try:
        registry.import_plugins(imports)
    except registry.RegistryError as err:
        raise RecipeError(str(err), source=origins("imports"), key="imports") from None
    return list(imports)


def validate_recipe(data: dict[str, Any], origins: Any = None) -> Recipe:
    """Import the recipe's plug-ins, then validate ``data`` against :class:`Recipe`."""
    origins = origins or (lambda path: "")
    import_recipe_plugins(data, origins)
    recipe = validate(Recipe, data, origins)
    check_consistency(recipe, origins)
    return recipe


def check_consistency(recipe: Recipe, origins: Any) -> None:
    """Rules that span sections: what the objectives need from the encoder and the teacher."""
    encoder = recipe.encoder
    if recipe.data is not None and recipe.data.max_text_len > encoder.max_text_tokens:
        raise RecipeError(f"`data.max_text_len` is {recipe.data.max_text_len} but encoder `{encoder.type}` takes "
                          f"at most {encoder.max_text_tokens} text tokens", source=origins("data.max_text_len"),
                          key="data.max_text_len")
    if encoder.packs_text and recipe.train.compile:
        raise RecipeError("`encoder.pack_text` gives every batch another packed length, which recompiles the "
                          "compiled blocks; use one of `encoder.pack_text` and `train.compile`",
                          source=origins("encoder.pack_text"), key="encoder.pack_text")
    providers = [n for n, c in recipe.objectives.items() if c.provides_similarity]
    for name, cfg in recipe.objectives.items():
        key = f"objectives.{name}"
        if cfg.requires_fusion and not encoder.supports_fusion:
            raise RecipeError(f"`{key}` ({cfg.type}) fuses images and text, but encoder `{encoder.type}` has no "
                              "fusion layers; use an albef or mome encoder or remove the objective",
                              source=origins(key), key=key)
        if cfg.reads_boxes and recipe.data is not None:
            moving = [k for k, on in (("crop_scale", recipe.data.crop_scale), ("flip", recipe.data.flip),
                                      ("randaugment", recipe.data.randaugment)) if on]
            if moving:
                fixes = ", ".join(f"data.{k}: " + ("false" if k == "flip" else "null") for k in moving)
                raise RecipeError(f"`{key}` ({cfg.type}) reads annotated boxes, but `data.{moving[0]}` moves the "
                                  f"pixels under them; set {fixes}", source=origins(f"data.{moving[0]}"),
                                  key=f"data.{moving[0]}")
        if cfg.needs_teacher and recipe.momentum is None:
            raise RecipeError(f"`{key}` ({cfg.type}) reads the momentum teacher (queue or distillation); "
                              "add a `momentum:` section (e.g. momentum: {decay: 0.995})",
                              source=origins(key), key=key)
        if cfg.needs_similarity and not providers:
            raise RecipeError(f"`{key}` ({cfg.type}) samples negatives by contrastive similarity; add an objective "
                              "that provides it (e.g. itc) or use `negatives: random`", source=origins(key), key=key)
        if cfg.needs_vl_path and not encoder.has_vl_path:
            raise RecipeError(f"`{key}.vl_path` needs vision-language experts (a mome encoder with vl_start < depth)",
                              source=origins(f"{key}.vl_path"), key=f"{key}.vl_path")


def resolve(ref: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ResolvedRecipe:
    """Resolve a recipe file or shipped name with overrides into a validated :class:`Recipe`."""
    data, prov, sources = resolve_raw(ref, overrides)
    return ResolvedRecipe(recipe=validate_recipe(data, prov), raw=data, sources=sources, origins=prov)


def load_recipe(ref: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Shorthand for ``resolve(ref, overrides).recipe``."""
    return resolve(ref, overrides).recipe
