"""The registry: tables per swap point, explicit registration, clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import vlkit
from vlkit import registry
from vlkit.schema import ComponentConfig


def test_builtin_tables_are_filled():
    assert {"albef", "mome", "dual"} <= set(registry.names("encoder"))
    assert {"mlm", "itm"} <= set(registry.names("head"))
    assert set(registry.KINDS) == {"encoder", "objective", "negatives", "head", "dataset", "task"}


def test_unknown_names_and_kinds_suggest_neighbours():
    with pytest.raises(registry.RegistryError, match="unknown encoder `albf`; did you mean `albef`"):
        registry.get("encoder", "albf")
    with pytest.raises(registry.RegistryError, match="unknown registry kind `objectve`; did you mean `objective`"):
        registry.get("objectve", "itc")


def test_register_rejects_silent_shadowing_and_bad_configs():
    @dataclass(kw_only=True)
    class Settings(ComponentConfig):
        depth: int = 1

    @vlkit.register("head", "test_head", config=Settings)
    class Head:
        """A test head."""

    try:
        assert registry.get("head", "test_head").config is Settings
        assert registry.get("head", "test_head").description == "A test head."
        with pytest.raises(registry.RegistryError, match="already registered"):
            vlkit.register("head", "test_head")(type("Other", (), {}))
        vlkit.register("head", "test_head", replace=True)(type("Other", (), {}))

        @dataclass
        class NoType:
            depth: int = 1

        with pytest.raises(TypeError, match="has no `type` field"):
            vlkit.register("head", "bad_head", config=NoType)(type("Bad", (), {}))
    finally:
        registry.unregister("head", "test_head")
