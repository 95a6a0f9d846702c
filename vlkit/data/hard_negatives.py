"""Annotated hard-negative captions: captions known to be false for an image (NegCLIP-style).

NegCLIP (Yuksekgonul et al., 2023) trains on captions whose words were swapped so that they no longer
describe the image ("the horse is eating the grass" → "the grass is eating the horse"); such negatives
teach word order and binding, which in-batch negatives rarely exercise. vlkit reads them from an
optional ``hard_negatives`` field of an ALBEF-style annotation entry, one list of strings per caption
(parallel to ``caption``, like ``phrases``)::

    {"image": "a.png", "caption": ["a red circle above a blue box", "two shapes"],
     "hard_negatives": [["a blue circle above a red box", "a blue box above a red circle"], []]}

How they are made is up to the data (rule-based swaps, a parser, a language model); the synthetic data
writes its verified-false attribute and relation swaps. The ``itm`` objective's ``hard_negatives``
setting pairs each image with one of its caption's negatives (drawn per sample) as an extra negative
pair. :func:`hard_negatives_problem` says why the field is unusable (the entry is then skipped and
counted like any malformed entry).
"""

from __future__ import annotations

from typing import Any

from vlkit.core.batch import HARD_NEGATIVES


def hard_negatives_problem(item: dict[str, Any], captions: list[str]) -> str | None:
    """Why an entry's optional ``hard_negatives`` field is unusable, or None (also when it is absent)."""
    negatives = item.get(HARD_NEGATIVES)
    if negatives is None:
        return None
    if not isinstance(negatives, list) or len(negatives) != len(captions):
        return f"`hard_negatives` must be a list with one list of captions per caption ({len(captions)})"
    for per_caption in negatives:
        if not isinstance(per_caption, list) or not all(isinstance(c, str) and c.strip() for c in per_caption):
            return "`hard_negatives` must hold one list of non-empty strings per caption"
    return None


def read_hard_negatives(item: dict[str, Any]) -> tuple[tuple[str, ...], ...] | None:
    """The entry's negatives per caption (validated by :func:`hard_negatives_problem` first), or None."""
    negatives = item.get(HARD_NEGATIVES)
    if negatives is None:
        return None
    return tuple(tuple(per_caption) for per_caption in negatives)
