"""Where a tower's weights come from, as the loaders see it: the parsed source (:mod:`vlkit.core.weight_source`,
the typed ``init`` field of encoder configs) and the error a load raises."""

from __future__ import annotations

from vlkit.core.errors import UserError
from vlkit.core.weight_source import (
    HUB_PREFIX,
    TIMM_PREFIX,
    WEIGHT_SUFFIXES,
    Source,
    SourceKind,
    Tower,
    WeightSource,
    parse_source,
    source_problem,
    timm_name_problem,
)

__all__ = ["HUB_PREFIX", "TIMM_PREFIX", "WEIGHT_SUFFIXES", "Source", "SourceKind", "Tower", "TowerInitError",
           "WeightSource", "parse_source", "source_problem", "timm_name_problem"]


class TowerInitError(UserError, ValueError):
    """A tower could not be initialized from the weights a recipe names (missing file, no network,
    mismatched shapes); the message says what to change."""
