"""Range checks for config fields, shared by every config's ``__post_init__``: a value out of range
(``nan`` and ``inf`` included, which plain comparisons let through) is a :class:`ConfigError` naming the
field (``"lr must be > 0, got nan"``; a recipe error shows the full key instead), so a recipe,
``from_dict`` and a direct construction all refuse it."""

from __future__ import annotations

from vlkit.core.errors import ConfigError

INT64_MAX = 2**63 - 1
"""The largest step, sample or batch count: what a 64-bit index holds."""

SEED_MAX = 2**32 - 1
"""The largest seed (NumPy's generators take seeds below 2**32)."""

# Model shapes far beyond any published model are typos; the bounds keep every shape buildable (a recipe
# check builds the model on the ``meta`` device, whose tensor sizes must fit 64 bits).
MAX_LAYERS = 1024
"""Transformer blocks of one stack."""

MAX_WIDTH = 2**20
"""Token widths, FFN widths, embedding widths, attention heads."""

MAX_ROWS = 2**24
"""Rows of a table: vocabulary, positions, token types, classes, queue entries."""

MAX_IMAGE_SIDE = 2**14
"""Pixels per image side."""

MAX_MLP_RATIO = 64.0
"""FFN width / token width."""

_INF = float("inf")


def is_finite(value: float) -> bool:
    """Not ``nan`` and not ``±inf``."""
    return value == value and -_INF < value < _INF


def check_number(key: str, value: float, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` at ``key`` unless ``value`` is a finite number within the bounds
    (``low``/``high`` inclusive unless ``low_open``/``high_open``; ``None``: unbounded)."""
    inside = is_finite(value)
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        raise ConfigError(f"{key} must be {_describe(low, high, low_open, high_open)}, got {value}", key=key)


def check_count(key: str, value: int, low: int = 1, high: int = INT64_MAX) -> None:
    """Raise :class:`ConfigError` at ``key`` unless the integer ``value`` is in ``[low, high]``."""
    if not low <= value <= high:
        raise ConfigError(f"{key} must be {_describe(low, high, False, False)}, got {value}", key=key)


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None or high == INT64_MAX:
        return f"{'>' if low_open else '≥'} {low}"
    if low is None:
        return f"{'<' if high_open else '≤'} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
