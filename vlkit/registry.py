"""One table per swap point, filled explicitly by vlkit's packages and extended by users.

A registry entry names something a recipe can refer to (``encoder.type: albef``,
``objectives.itm.negatives: in_batch_hard``). vlkit's own packages register their parts with the
:func:`register` decorator at import; :func:`load_builtins` imports exactly those packages (an
explicit list, no ``import *`` side effects). Users add plug-ins the same way from their own modules
and list those modules in a recipe's ``imports:``::

    import vlkit

    @vlkit.register("objective", "siglip")
    class SigLIP(vlkit.objectives.Objective):
        Config = SigLIPConfig          # the dataclass its recipe section is validated against
        ...

``vlkit registry --import MODULE`` (or ``--recipe R``, which imports ``R``'s ``imports:``) lists them
beside the built-ins.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from vlkit.core.errors import RegistryError

MAX_NAME_SHOWN = 60
"""Characters of an unknown name that a message repeats."""

KINDS: tuple[str, ...] = ("encoder", "objective", "negatives", "head", "dataset", "task")

# vlkit's packages that fill the tables; imported (in this order) by load_builtins().
BUILTIN_MODULES: tuple[str, ...] = (
    "vlkit.encoders",
    "vlkit.heads",
    "vlkit.objectives",
    "vlkit.data.sources",
    "vlkit.data.webdataset_source",
    "vlkit.data.corpora",
    "vlkit.tasks.zeroshot",
    "vlkit.tasks.classification",
    "vlkit.tasks.vqa",
    "vlkit.tasks.retrieval",
    "vlkit.tasks.grounding",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One registered part.

    Attributes:
        kind: the swap point (one of :data:`KINDS`).
        name: the name recipes use.
        target: the class or factory that builds the part.
        config: the dataclass a recipe section for this part is validated against, or ``None``
            when the part takes no settings.
        description: one line for ``vlkit registry``.
        module: the module that registered it.
    """

    kind: str
    name: str
    target: Any
    config: type | None
    description: str
    module: str


_TABLES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_builtins_loaded = False


def nearest(name: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """A '; did you mean `x`?' suffix, or the list of valid names when nothing is close."""
    close = nearest(name[:MAX_NAME_SHOWN], candidates)
    if close:
        return "; did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
    if candidates:
        return "; valid: " + ", ".join(f"`{c}`" for c in sorted(candidates))
    return ""


def shown(name: str) -> str:
    """``name`` cut to :data:`MAX_NAME_SHOWN` characters for a message (a recipe value can be any length)."""
    return name if len(name) <= MAX_NAME_SHOWN else name[: MAX_NAME_SHOWN - 1] + "…"


def _check_kind(kind: str) -> None:
    if kind not in _TABLES:
        raise RegistryError(f"unknown registry kind `{shown(kind)}`{did_you_mean(kind, KINDS)}")


def _first_doc_line(obj: Any) -> str:
    doc = (inspect.getdoc(obj) or "").strip()
    return doc.splitlines()[0].replace("``", "`") if doc else ""


def register(
    kind: str,
    name: str,
    *,
    config: type | None = None,
    description: str | None = None,
    replace: bool = False,
) -> Callable[[T], T]:
    """Decorator that registers a class or factory under ``kind``/``name``.

    Args:
        kind: one of :data:`KINDS`.
        name: the name a recipe uses to select the part.
        config: the dataclass that validates the part's recipe section; defaults to the target's
            ``Config`` attribute when it has one.
        description: one line for ``vlkit registry``; defaults to the first docstring line.
        replace: allow re-registering an existing name (otherwise an error, so two plug-ins cannot
            silently shadow each other).
    """
    _check_kind(kind)

    def decorator(target: T) -> T:
        cfg = config if config is not None else getattr(target, "Config", None)
        if cfg is not None and not dataclasses.is_dataclass(cfg):
            raise TypeError(f"config for {kind} `{name}` must be a dataclass, got {cfg!r}")
        if cfg is not None and "type" not in {f.name for f in dataclasses.fields(cfg)}:
            raise TypeError(f"config {cfg.__name__} of {kind} `{name}` has no `type` field: derive it from "
                            "vlkit.schema.ComponentConfig (objectives: vlkit.objectives.ObjectiveConfig)")
        table = _TABLES[kind]
        existing = table.get(name)
        if existing is not None and not replace and existing.target is not target:
            raise RegistryError(
                f"{kind} `{name}` is already registered by {existing.module}; "
                "pass replace=True to override it deliberately"
            )
        table[name] = Entry(
            kind=kind,
            name=name,
            target=target,
            config=cfg,
            description=description if description is not None else _first_doc_line(target),
            module=getattr(target, "__module__", "?"),
        )
        return target

    return decorator


def load_builtins() -> None:
    """Import vlkit's own packages so that their parts are registered (idempotent)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _builtins_loaded = True


def import_plugins(modules: list[str] | tuple[str, ...], named_in: str = "listed in `imports`") -> None:
    """Import user plug-in modules (dotted module names only): a recipe's ``imports:``, or the modules
    ``vlkit registry --import`` names (``named_in`` says which, for the message)."""
    for module in modules:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise RegistryError(f"`{shown(module)}` {named_in} is not a module name (dotted, e.g. my_plugins.siglip)")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise RegistryError(
                f"cannot import plug-in module `{shown(module)}` {named_in}: {err}. "
                "The module must be importable (installed, or on PYTHONPATH)."
            ) from err


def get(kind: str, name: str) -> Entry:
    """The entry ``kind``/``name``; an unknown name raises with the nearest registered names."""
    load_builtins()
    _check_kind(kind)
    table = _TABLES[kind]
    if name not in table:
        raise RegistryError(f"unknown {kind} `{shown(name)}`{did_you_mean(name, tuple(table))}")
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    load_builtins()
    _check_kind(kind)
    return sorted(_TABLES[kind])


def entries() -> Iterator[Entry]:
    """Every entry, by kind then name."""
    load_builtins()
    for kind in KINDS:
        for name in sorted(_TABLES[kind]):
            yield _TABLES[kind][name]


def unregister(kind: str, name: str) -> None:
    """Remove an entry (for tests and interactive sessions)."""
    _check_kind(kind)
    _TABLES[kind].pop(name, None)
