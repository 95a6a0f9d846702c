"""Typed recipe schemas: dataclasses in, validated instances out, errors that name the key.

Every section of a recipe is a dataclass. :func:`validate` turns the merged YAML mapping into
instances of those dataclasses and stops at the first problem with a :class:`RecipeError` that
names the file the key came from, the dotted key path and the nearest valid keys or registry
names. Three markers (used with ``typing.Annotated``) tie the schema to the registry:

- ``Annotated[str, RegistryName("negatives")]``: a registered name.
- ``Annotated[Any, Component("encoder")]``: a mapping with a ``type`` naming a registry entry,
  whose remaining keys are validated against that entry's config dataclass (a string is shorthand
  for ``{type: name}``).
- ``Annotated[dict[str, Any], ComponentMap("objective")]``: name → component, the name doubling as
  the type unless ``type`` says otherwise; a ``null`` entry removes a part inherited from a base.

Config dataclasses of registered parts derive from :class:`ComponentConfig`. A config may declare
``SIZES`` (a ``ClassVar`` mapping size name → nested defaults) so that ``size: base`` fills in
everything the recipe does not set itself.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NoReturn, Union

from vlkit import registry
from vlkit.core.errors import ConfigError, RecipeError
from vlkit.core.ranges import INT64_MAX, is_finite

__all__ = ["Component", "ComponentConfig", "ComponentMap", "ConfigError", "RecipeError", "RegistryName",
           "deep_merge", "to_dict", "validate", "validate_component"]


@dataclass(frozen=True)
class RegistryName:
    """Marker: a string that must name an entry of registry ``kind``."""

    kind: str


@dataclass(frozen=True)
class Component:
    """Marker: a mapping ``{type: name, ...}`` validated against the entry's config."""

    kind: str


@dataclass(frozen=True)
class ComponentMap:
    """Marker: ``{instance_name: {type?: name, ...}}``; ``type`` defaults to the instance name."""

    kind: str


@dataclass(kw_only=True)
class ComponentConfig:
    """Base of every registered part's config: ``type`` is the registry name that built it."""

    type: str = ""

    SIZES: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None) -> Any:
        """A validated config built the way a recipe section is: ``size`` presets applied first, then
        ``data`` on top, e.g. ``AlbefConfig.from_dict({"size": "tiny", "embed_dim": 16})``. Building the
        dataclass directly skips the presets."""
        validator = _Validator(_no_origin)
        instance = validator.dataclass_(cls, validator.apply_size(cls, dict(data or {}), ""), "")
        if not instance.type:  # the registry name of this config's part, when it is unambiguous
            names = [e.name for e in registry.entries() if e.config is cls]
            instance.type = names[0] if len(names) == 1 else ""
        return instance


Origins = Callable[[str], str]
"""Maps a dotted key path to the file (or ``command line``) that set it."""


def _no_origin(path: str) -> str:
    return ""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: ``top`` over ``base``, merging nested mappings key by key.

    A nested mapping that names a different ``type`` than the one it overrides replaces it whole:
    the settings of one registered part (``json_pairs`` files) mean nothing to another (``synthetic``).
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        inherited = out.get(key)
        if isinstance(value, dict) and isinstance(inherited, dict) and not _changes_type(inherited, value):
            out[key] = deep_merge(inherited, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _changes_type(inherited: dict[str, Any], value: dict[str, Any]) -> bool:
    return "type" in value and "type" in inherited and value["type"] != inherited["type"]


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


class _Validator:
    def __init__(self, origins: Origins) -> None:
        self.origins = origins

    def fail(self, path: str, message: str) -> RecipeError:
        return RecipeError(message, source=self.origins(path), key=path)

    # ---------------------------------------------------------------- dataclasses
    def dataclass_(self, cls: type, data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            where = f"`{path}`" if path else "the recipe"
            return self._raise(path, f"{where} must be a mapping, got {_type_name(data)}")
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            self.check_key(key, path)
            if key not in fields:
                close = registry.did_you_mean(_short(key), tuple(fields))
                self._raise(_join(path, key), f"unknown key `{_join(path, _short(key))}`{close}")
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            if name in data:
                kwargs[name] = self.value(hints[name], data[name], _join(path, name))
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                self._raise(_join(path, name), f"missing required key `{_join(path, name)}`")
        try:
            return cls(**kwargs)
        except ConfigError as err:
            key = _join(path, err.key) if err.key else path
            message = str(err).removeprefix(f"{err.key} ") if err.key else str(err)  # the key is named already
            raise self.fail(key, f"`{key}`: {message}") from None
        except (ValueError, TypeError) as err:
            raise self.fail(path, f"`{path or 'recipe'}`: {err}") from None

    def _raise(self, path: str, message: str) -> NoReturn:
        raise self.fail(path, message)

    def check_key(self, key: Any, path: str) -> None:
        """Keys of a recipe mapping are strings (YAML also reads ``null:``, ``1:`` and ``true:`` as keys)."""
        if not isinstance(key, str):
            where = f"`{path}`" if path else "the recipe"
            self._raise(path, f"{where} has the key {_type_name(key)} `{key}`; keys must be names (strings)")

    # ---------------------------------------------------------------- values
    def value(self, hint: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            base, *markers = typing.get_args(hint)
            for marker in markers:
                if isinstance(marker, RegistryName):
                    return self.registry_name(marker.kind, value, path)
                if isinstance(marker, Component):
                    return self.component(marker.kind, value, path, base=base)
                if isinstance(marker, ComponentMap):
                    item_hint = typing.get_args(base)[1] if typing.get_origin(base) is dict else Any
                    return self.component_map(marker.kind, value, path, base=item_hint)
            return self.value(base, value, path)
        if hint is Any:
            return value
        if origin in (Union, types.UnionType):
            arms = typing.get_args(hint)
            if value is None:
                if type(None) in arms:
                    return None
                return self._raise(path, f"`{path}` must not be null")
            non_null = [a for a in arms if a is not type(None)]
            if len(non_null) == 1:
                return self.value(non_null[0], value, path)
            mapping_arms = [a for a in non_null if dataclasses.is_dataclass(a) or typing.get_origin(a) is dict]
            if isinstance(value, dict) and len(mapping_arms) == 1:
                return self.value(mapping_arms[0], value, path)  # its own errors name the bad key
            for arm in non_null:
                try:
                    return self.value(arm, value, path)
                except RecipeError:
                    continue
            expected = " or ".join(self.describe(a) for a in non_null)
            return self._raise(path, f"`{path}` has the wrong type: {_type_name(value)} (expected {expected})")
        if value is None:
            return self._raise(path, f"`{path}` must not be null (expected {self.describe(hint)})")
        if origin is Literal:
            choices = typing.get_args(hint)
            if value not in choices:
                names = [str(c) for c in choices]
                return self._raise(path, f"`{path}` is `{_short(value)}`, not one of {', '.join(names)}"
                                   f"{registry.did_you_mean(_short(value), names)}")
            return value
        if origin in (list, tuple):
            if not isinstance(value, list | tuple):
                return self._raise(path, f"`{path}` must be a list, got {_type_name(value)}")
            (item_hint, *_rest) = typing.get_args(hint) or (Any,)
            items = [self.value(item_hint, v, _join(path, i)) for i, v in enumerate(value)]
            return items if origin is list else tuple(items)
        if origin is dict:
            if not isinstance(value, dict):
                return self._raise(path, f"`{path}` must be a mapping, got {_type_name(value)}")
            _, value_hint = typing.get_args(hint) or (str, Any)
            for key in value:
                self.check_key(key, path)
            return {k: self.value(value_hint, v, _join(path, k)) for k, v in value.items()}
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.dataclass_(hint, value, path)
        if hint is bool:
            if not isinstance(value, bool):
                return self._raise(path, f"`{path}` must be true or false, got {_type_name(value)}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return self._raise(path, f"`{path}` must be an integer, got {_type_name(value)} `{_short(value)}`")
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                return self._raise(path, f"`{path}` is {_short(value)}, beyond what a 64-bit integer holds")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return self._raise(path, f"`{path}` must be a number, got {_type_name(value)} `{_short(value)}`")
            if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
                return self._raise(path, f"`{path}` is {_short(value)}, beyond what a 64-bit integer holds")
            if not is_finite(value):
                return self._raise(path, f"`{path}` must be a finite number, got {value}")
            return float(value)
        if isinstance(hint, type) and issubclass(hint, str):  # str, or a typed string such as WeightSource
            if not isinstance(value, str):
                return self._raise(path, f"`{path}` must be a string, got {_type_name(value)}")
            return value if hint is str else hint(value)
        raise TypeError(f"schema type {hint!r} at `{path}` is not supported")

    @staticmethod
    def describe(hint: Any) -> str:
        return getattr(hint, "__name__", str(hint))

    # ---------------------------------------------------------------- registry-backed
    def registry_name(self, kind: str, value: Any, path: str) -> str:
        if not isinstance(value, str):
            return self._raise(path, f"`{path}` must name a registered {kind}, got {_type_name(value)}")
        try:
            registry.get(kind, value)
        except registry.RegistryError as err:
            raise self.fail(path, f"`{path}`: {err}") from None
        return value

    def component(self, kind: str, value: Any, path: str, default_type: str | None = None,
                  base: Any = Any) -> Any:
        """A ``{type: name, ...}`` section validated against the registered part's config; ``base`` is the
        config class the schema declares (a part registered without a config gets ``base(type=name)``)."""
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            return self._raise(path, f"`{path}` must be a mapping with a `type`, got {_type_name(value)}")
        for key in value:
            self.check_key(key, path)
        name = value.get("type", default_type)
        if name is None:
            return self._raise(_join(path, "type"),
                               f"`{path}` needs a `type`; registered {kind}s: {', '.join(registry.names(kind))}")
        if not isinstance(name, str):
            return self._raise(_join(path, "type"), f"`{_join(path, 'type')}` must be a string")
        try:
            entry = registry.get(kind, name)
        except registry.RegistryError as err:
            type_path = _join(path, "type") if "type" in value else path
            raise self.fail(type_path, f"`{type_path}`: {err}") from None
        cfg_cls = entry.config
        declared = base if isinstance(base, type) and issubclass(base, ComponentConfig) else ComponentConfig
        settings = {k: v for k, v in value.items() if k != "type"}
        if cfg_cls is None:
            if settings:
                first = next(iter(settings))
                self._raise(_join(path, first), f"unknown key `{_join(path, _short(first))}`: {kind} `{name}` takes "
                            "no settings")
            return declared(type=name)
        if not issubclass(cfg_cls, declared):
            return self._raise(path, f"`{path}`: {kind} `{name}` has config {cfg_cls.__name__}, which must derive "
                               f"from {declared.__module__}.{declared.__name__} (the plug-in's `Config`)")
        settings = self.apply_size(cfg_cls, settings, path)
        instance = self.dataclass_(cfg_cls, settings, path)
        instance.type = name
        return instance

    def apply_size(self, cfg_cls: type, settings: dict[str, Any], path: str) -> dict[str, Any]:
        sizes: dict[str, dict[str, Any]] = cfg_cls.SIZES if issubclass(cfg_cls, ComponentConfig) else {}
        if not sizes:
            return settings
        default = next((f.default for f in dataclasses.fields(cfg_cls) if f.name == "size"), None)
        size = settings.get("size", default)
        if not isinstance(size, str) or size not in sizes:
            self._raise(_join(path, "size"), f"`{_join(path, 'size')}` is `{_short(size)}`, not a known size"
                        f"{registry.did_you_mean(_short(size), tuple(sizes))}")
        return deep_merge(sizes[size], settings)

    def component_map(self, kind: str, value: Any, path: str, base: Any = Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            return self._raise(path, f"`{path}` must be a mapping of name → settings, got {_type_name(value)}")
        out: dict[str, Any] = {}
        for name, settings in value.items():
            self.check_key(name, path)
            if settings is None:  # `objectives.mlm: null` removes an inherited part
                continue
            if settings is True or settings == {}:
                settings = {}
            out[str(name)] = self.component(kind, settings, _join(path, str(name)), default_type=str(name),
                                            base=base)
        return out


def _short(value: Any, limit: int = 60) -> str:
    """``value`` as text, cut to ``limit`` characters (a recipe value can be arbitrarily long)."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a huge integer is slow, then refused
        return f"a {value.bit_length()}-bit integer"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate(cls: type, data: Any, origins: Origins = _no_origin, path: str = "") -> Any:
    """Validate ``data`` (plain YAML values) against dataclass ``cls``; raise :class:`RecipeError`."""
    return _Validator(origins).dataclass_(cls, data, path)


def validate_component(kind: str, data: Any, origins: Origins = _no_origin, path: str = "") -> Any:
    """Validate one registry-backed section, e.g. ``validate_component("encoder", {...})``."""
    return _Validator(origins).component(kind, data, path)


def to_dict(instance: Any) -> Any:
    """Plain YAML-ready values from validated instances (dataclasses, lists, dicts)."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
    if isinstance(instance, list | tuple):
        return [to_dict(v) for v in instance]
    if isinstance(instance, dict):
        return {k: to_dict(v) for k, v in instance.items()}
    if isinstance(instance, str):
        return str(instance)  # typed strings (WeightSource) as plain YAML strings
    return instance
