"""Recipe YAML read within bounds: a safe loader, and limits that a hostile file cannot get past.

A recipe is a few hundred nodes; these limits are orders of magnitude above that and refuse, within a
fraction of a second and before anything is built, what would otherwise hang or exhaust memory:

- :data:`MAX_BYTES` per file or command-line value;
- :data:`MAX_NODES` after alias expansion (an "alias bomb" of nested ``&a [*b, *b, ...]`` anchors is
  counted as what it expands to, in one pass over the parser's events, before anything is built);
- :data:`MAX_DEPTH` levels of nesting, aliases expanded (a deeper document would exhaust Python's
  recursion in the composer);
- recursive aliases (``&a [*a]``) and keys that are not strings (``null:``, ``1:``) are refused.

Values are typed as YAML 1.2 reads them (``3e-4`` is a float), duplicate keys are an error, and merge
keys (``<<:``) are not supported. Every refusal is a :class:`RecipeError` naming the source and the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlkit.core.errors import RecipeError

MAX_BYTES = 1_000_000
"""Bytes of one recipe file or one command-line value."""

MAX_NODES = 50_000
"""Values (scalars, lists, mappings) of one document once aliases are expanded, and of a merged recipe."""

MAX_DEPTH = 32
"""Levels of nesting of lists and mappings, aliases expanded (recipes use about six)."""

MAX_SCALAR_DIGITS = 40
"""Characters of an integer literal (int64 needs 20); longer ones are refused before conversion."""


class RecipeLoader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 floats (``1e-4``), an error on duplicate and non-string keys, and
    bounded integer literals."""


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _type_name(value: Any) -> str:
    return "null" if value is None else {bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"the key `{key_node.value[:60]}` is {_type_name(key)}, not a name (quote it if it "
                f"is meant as one: '{key_node.value[:60]}')", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key `{key[:60]}` (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    if len(node.value) > MAX_SCALAR_DIGITS:  # int() of a huge literal is slow, then refused by Python
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {len(node.value)} characters is no recipe value", node.start_mark)
    value: int = loader.construct_yaml_int(node)
    return value


RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_EVENT_LOADER: type = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
"""The bounds pass reads events only; libyaml's parser does that ~20× faster than the Python one."""


@dataclass
class _Open:
    """A list or mapping whose end event has not come yet."""

    start: int
    anchor: str | None
    height: int = 1


def check_bounds(text: str, source: str) -> None:
    """Refuse ``text`` when it is larger than :data:`MAX_BYTES` (as UTF-8), expands to more than
    :data:`MAX_NODES` values, nests deeper than :data:`MAX_DEPTH` or holds a recursive alias. One pass
    over the parser's events; nothing is built. Syntax errors are left to the loader."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise RecipeError(f"larger than {MAX_BYTES:,} bytes; a recipe is a few kilobytes", source=source)
    count = 0
    stack: list[_Open] = []
    anchors: dict[str, tuple[int, int]] = {}  # anchor → (values it expands to, its height)
    try:
        for event in yaml.parse(text, Loader=_EVENT_LOADER):
            if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                if isinstance(event, yaml.AliasEvent):
                    if event.anchor in {o.anchor for o in stack}:
                        raise RecipeError(f"the alias `*{event.anchor}` refers to a value that contains it; "
                                          "recursive aliases are not allowed", source=source)
                    size, height = anchors.get(event.anchor or "", (1, 1))
                else:
                    size, height = 1, 1
                    if event.anchor:
                        anchors[event.anchor] = (1, 1)
                count += size
                if stack:
                    stack[-1].height = max(stack[-1].height, height + 1)
                if len(stack) + height > MAX_DEPTH:
                    raise _too_deep(source)
            elif isinstance(event, yaml.CollectionStartEvent):
                count += 1
                stack.append(_Open(start=count - 1, anchor=event.anchor))
                if len(stack) > MAX_DEPTH:
                    raise _too_deep(source)
            elif isinstance(event, yaml.CollectionEndEvent):
                done = stack.pop()
                if done.anchor:
                    anchors[done.anchor] = (count - done.start, done.height)
                if stack:
                    stack[-1].height = max(stack[-1].height, done.height + 1)
            if count > MAX_NODES:
                raise RecipeError(f"expands to more than {MAX_NODES:,} values (aliases expanded); a recipe has a "
                                  "few hundred", source=source)
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid YAML {one_line(err)}", source=source) from None


def _too_deep(source: str) -> RecipeError:
    return RecipeError(f"nests lists and mappings more than {MAX_DEPTH} levels deep (aliases expanded)",
                       source=source)


def one_line(err: yaml.YAMLError) -> str:
    """A YAML error as one line: ``at line L, column C: what``."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = "; ".join(part for part in (err.context, err.problem) if part)
        return f"{where}: {what}" if where else f": {what}"
    return ": " + " ".join(str(err).split())


def load_text(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The value of one YAML document within the bounds, and its node tree (for key lines)."""
    check_bounds(text, source)
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid YAML {one_line(err)}", source=source) from None
    finally:
        loader.dispose()
    return data, node


def load_file(path: Path, source: str | None = None) -> tuple[Any, yaml.Node | None]:
    """The value of a YAML file within the bounds (at most :data:`MAX_BYTES` are read), and its node tree.

    Raises:
        RecipeError: the file cannot be read, is too large, is not UTF-8, or is not bounded YAML.
    """
    source = source or str(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as err:
        raise RecipeError(f"cannot read recipe: {err.strerror}", source=source) from None
    return load_text(decode(raw, source), source)


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text of a recipe file; anything else names the first bad byte."""
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"larger than {MAX_BYTES:,} bytes; a recipe is a few kilobytes", source=source)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save the recipe "
                          "as UTF-8", source=source) from None


def count_values(data: Any, limit: int = MAX_NODES) -> int:
    """Values in ``data`` (each scalar, list and mapping once per place it appears), counting stops past ``limit``."""
    count = 0
    pending = [data]
    while pending and count <= limit:
        value = pending.pop()
        count += 1
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count
