"""Progress, as every package sees it: the switch that turns bars off, and bars drawn by whatever the top of
vlkit installed.

The lower packages (``data`` above all: synthetic data generation, also run as a training run's data
preparation) may import only ``core``, and ``core`` imports nothing but the standard library and torch.
So this module only *declares* a bar — :func:`bar` / :func:`track` — and draws it with the factory
:mod:`vlkit.progress` installs when it is imported (tqdm on stderr, log lines routed above the bars);
until then, and whenever progress is switched off, a bar is a silent stand-in with the same methods.

The switch is scoped: inside ``with switched(False)`` (``vlkit train --no-progress`` / ``progress=False``,
``vlkit ablate --no-progress``) every bar is off, however deep the code that opens it, so code that only
evaluates or generates data needs no ``progress`` argument. Bars are also off on ranks other than 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class BarContext(Protocol):
    """What :func:`bar` returns: a context manager whose value has tqdm's ``update(n)``,
    ``set_postfix_str(text)`` and ``disable`` (True when nothing is drawn)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


BarFactory = Callable[..., BarContext]
"""``(total, desc, *, unit, leave, initial, **options)`` → a :class:`BarContext` that draws."""

_switch: list[bool] = []
_factory: list[BarFactory] = []


def enabled() -> bool:
    """Whether bars opened now are drawn: no enclosing :class:`switched` turned them off, this is rank 0
    (``RANK``), and a bar factory is installed."""
    return all(_switch) and os.environ.get("RANK", "0") == "0" and bool(_factory)


class switched:  # noqa: N801 - used as a function: ``with switched(on):``
    """Within the block, bars are drawn only if ``on`` (and they were drawn outside it)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        _switch.append(self.on)

    def __exit__(self, *exc: object) -> None:
        _switch.pop()


def install(factory: BarFactory) -> None:
    """Draw bars with ``factory`` from now on (:mod:`vlkit.progress` installs tqdm's)."""
    _factory[:] = [factory]


class Silent:
    """The bar when nothing is drawn: counts nothing, shows nothing."""

    disable = True
    n = 0

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: float | None = None, desc: str | None = None, *, unit: str = "it", leave: bool = False,
        initial: float = 0, show: bool = True, **options: Any) -> BarContext:
    """A progress bar for a ``with`` block (closed at its end).

    Args:
        total: the count the bar runs to (None: a counter without an end).
        desc: what is being counted, e.g. ``"encoding images"``.
        unit: the unit of ``total`` (``"image"``, ``"step"``, ...).
        leave: keep the finished bar on screen (the training bar does; phases inside it do not).
        initial: the count to start from (a resumed run's step).
        show: False: the silent stand-in whatever the switch (a phase with nothing to count).
        options: further options for the installed factory (tqdm's).
    """
    if not (show and enabled()):
        return Silent()
    return _factory[0](total, desc, unit=unit, leave=leave, initial=initial, **options)


def track(items: Iterable[T], desc: str, *, total: float | None = None, unit: str = "it",
          weight: Callable[[T], float] | None = None) -> Iterator[T]:
    """Yield ``items`` while a :func:`bar` counts them (``total``: by default ``len(items)`` when it has one).

    Args:
        weight: ``item → count`` for items that stand for several units (e.g. a batch's size); default 1.
    """
    if total is None and isinstance(items, Sized):
        try:
            total = len(items)
        except TypeError:  # e.g. a DataLoader over an iterable dataset
            total = None
    with bar(total, desc, unit=unit) as progress:
        for item in items:
            yield item
            progress.update(1 if weight is None else weight(item))
