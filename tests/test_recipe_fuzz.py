"""Property-based: every damaged recipe ends in success or a UserError, never another exception.

The shipped recipes are mutated (a value of every YAML type at any key, unknown and near-miss keys,
registry names in the wrong place, a list / null / scalar where a mapping is, removed keys, arbitrary
command-line overrides) and run through what ``vlkit recipes show`` runs in-process: resolution
(YAML within bounds, inheritance, validation) and :func:`vlkit.checks.check_before_work` (the model built
on ``meta``, the files of this machine). A traceback there would be a bug in vlkit.

Profiles: ``ci`` (the default; well under a minute on two CPU cores) and ``wide`` (many more examples,
for a search before a release)::

    HYPOTHESIS_PROFILE=wide python -m pytest -q tests/test_recipe_fuzz.py
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlkit import cli, registry
from vlkit.checks import check_before_work
from vlkit.core.errors import UserError
from vlkit.recipe import resolve, resolve_raw, shipped_recipe_names, validate_recipe

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("wide", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NAMES = shipped_recipe_names()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the mutated recipes are written (module-scoped: hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("fuzz")


@cache
def raw_recipe(name: str) -> dict[str, Any]:
    """The merged mapping of a shipped recipe (before validation)."""
    return resolve_raw(name)[0]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path (mapping keys and list indices) below ``node``."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.append((*prefix, index))
            out += paths(value, (*prefix, index))
    return out


def mappings(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Key paths of every mapping in ``node`` (``()`` is the top)."""
    out = [prefix] if isinstance(node, dict) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in children:
        out += mappings(value, (*prefix, key))
    return out


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


REGISTRY_NAMES = sorted({e.name for e in registry.entries()})
NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -0.0, 1e308]))
WORDS = st.one_of(st.text(max_size=12), st.sampled_from(REGISTRY_NAMES),
                  st.sampled_from(["", "base", "tiny", "../x.yaml", "/nonexistent/file.json", "timm:nope",
                                   "bert-base-uncased", "data/{0..3}.tar", "cuda", "~"]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(REGISTRY_NAMES)), inner, max_size=3)),
    max_leaves=6)
KEYS = st.one_of(st.text(min_size=1, max_size=10), st.sampled_from(REGISTRY_NAMES), st.none(), st.integers(-2, 2))


def near_miss(word: str, data: st.DataObject) -> str:
    """``word`` with one character dropped, doubled or replaced."""
    if not word:
        return "x"
    i = data.draw(st.integers(0, len(word) - 1))
    kind = data.draw(st.sampled_from(["drop", "double", "replace"]))
    if kind == "drop":
        return word[:i] + word[i + 1:] or "x"
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + data.draw(st.sampled_from("aeiouxz_")) + word[i + 1:]


def mutate(recipe: dict[str, Any], data: st.DataObject) -> None:
    """One random damage to ``recipe``, in place."""
    kind = data.draw(st.sampled_from(["value", "value", "add_key", "rename_key", "registry_name", "structure",
                                      "delete", "part", "part"]), label="mutation")
    if kind == "part":  # another registered part where one goes: an objective, a task, an encoder, a source
        where = data.draw(st.sampled_from(["objectives", "task", "encoder", "source"]), label="where")
        own = {"objectives": "objective", "source": "dataset"}.get(where, where)
        name = data.draw(st.one_of(st.sampled_from(registry.names(own)), st.sampled_from(REGISTRY_NAMES)), label="part")
        settings = data.draw(st.sampled_from([{}, None, {"type": name}]), label="settings")
        if where == "objectives" and isinstance(recipe.get("objectives"), dict):
            recipe["objectives"][name] = settings
        elif where == "task":
            recipe["task"] = name if settings is None else {"type": name}
        elif where == "encoder" and isinstance(recipe.get("encoder"), dict):
            recipe["encoder"]["type"] = name
        elif isinstance(recipe.get("data"), dict):
            recipe["data"]["source"] = name
        return
    every = paths(recipe)
    if kind in ("value", "registry_name", "structure", "delete") and every:
        path = data.draw(st.sampled_from(every), label="path")
        parent, key = at(recipe, path[:-1]), path[-1]
        if kind == "value":
            parent[key] = data.draw(VALUES, label="value")
        elif kind == "registry_name":
            parent[key] = data.draw(st.one_of(st.sampled_from(REGISTRY_NAMES), WORDS), label="name")
        elif kind == "structure":
            old = parent[key]
            choices = [None, [], [old], {}, "x", 3] + ([list(old.values())] if isinstance(old, dict) else []) \
                + ([{"type": "x"}, {str(i): v for i, v in enumerate(old)}] if isinstance(old, list) else [])
            parent[key] = data.draw(st.sampled_from(choices), label="structure")
        elif isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return
    target = at(recipe, data.draw(st.sampled_from(mappings(recipe)), label="mapping"))
    if kind == "rename_key" and target:
        old = data.draw(st.sampled_from(sorted(target, key=str)), label="key")
        target[near_miss(str(old), data)] = target.pop(old)
    else:
        siblings = sorted(str(k) for k in target) or ["type"]
        new = data.draw(st.one_of(KEYS, st.sampled_from(siblings).map(lambda k: k + "s")), label="new key")
        target[new] = data.draw(VALUES, label="value")


def check(ref: str | Path, overrides: tuple[str, ...] = ()) -> str:
    """What `vlkit recipes show` runs: ``ok`` (and what it printed resolves to the same recipe), or the one
    line a user error prints. Any other exception fails the test."""
    try:
        resolved = resolve(ref, list(overrides))
        check_before_work(resolved.recipe, resolved.origins)
    except UserError as err:
        line = cli._error_line(err)
        assert line.strip() != "error:" and "\n" not in line, line
        return line
    printed = yaml.safe_load(resolved.recipe.to_yaml())
    assert validate_recipe(printed).to_dict() == resolved.recipe.to_dict()  # `recipes show` prints a recipe
    return "ok"


@settings(PROFILE)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_mutated_recipes_end_in_success_or_a_user_error(work: Path, name: str, data: st.DataObject) -> None:
    recipe = copy.deepcopy(raw_recipe(name))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutate(recipe, data)
    file = work / "mutated.yaml"
    try:
        file.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    except yaml.YAMLError:  # a value safe_dump cannot write is not a recipe anyone can have
        return
    assert check(file).startswith(("ok", "error: "))


OVERRIDE_KEYS = st.sampled_from(sorted({".".join(str(k) for k in p) for n in NAMES for p in paths(raw_recipe(n))
                                        if all(isinstance(k, str) for k in p)}))


@settings(PROFILE)
@given(name=st.sampled_from(NAMES), key=st.one_of(OVERRIDE_KEYS, st.text(max_size=20)), value=st.text(max_size=40))
def test_arbitrary_command_line_overrides_end_in_success_or_a_user_error(name: str, key: str, value: str) -> None:
    assert check(name, (f"{key}={value}",)).startswith(("ok", "error: "))


SET_PART = {"objective": "objectives.{}={{}}", "task": "task={}", "head": "objectives.itm.head={}",
            "negatives": "objectives.itm.negatives={}", "dataset": "data.source={}"}
PARTS = [(kind, name) for kind in SET_PART for name in registry.names(kind)]


@pytest.mark.parametrize("recipe", ["albef/tiny", "vlmo/tiny", "dual/tiny"])
@pytest.mark.parametrize(("kind", "name"), PARTS)
def test_every_registered_part_on_every_encoder_ends_in_success_or_a_user_error(recipe: str, kind: str,
                                                                                 name: str) -> None:
    """Each registered part with its defaults, on each encoder: the combinations random mutation rarely
    reaches (masked image modelling on a dual encoder, bi-fusion on MoME, a box head as the match head)."""
    assert check(recipe, (SET_PART[kind].format(name),)).startswith(("ok", "error: "))


@pytest.mark.parametrize("name", NAMES)
def test_every_shipped_recipe_passes_the_recipe_checks_or_names_what_this_machine_lacks(name: str) -> None:
    """The unmutated recipes: the model checks pass everywhere; what fails names a file of this machine."""
    resolved = resolve(name)
    check_before_work(resolved.recipe, resolved.origins, machine=False)
    outcome = check(name)
    assert outcome == "ok" or "does not exist" in outcome or "no checkpoint at" in outcome, outcome
