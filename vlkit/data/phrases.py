"""Phrase grounding annotations: which words of a caption name which box of the image.

In an ALBEF-style annotation entry, an optional ``phrases`` list runs parallel to ``caption`` (one
list per caption, Flickr30k-Entities style)::

    {"image": "a.png", "caption": ["the red circle is above a blue box", ...],
     "phrases": [[{"span": [4, 14], "box": [10, 4, 22, 16]}, {"span": [24, 34], "box": [30, 40, 46, 56]}], ...]}

``span`` is the ``[start, end)`` character range of the phrase in its caption, ``box`` the object's
``[left, top, right, bottom]`` in pixels of the image file. The synthetic data writes them for every
caption. :func:`phrases_problem` says why a ``phrases`` field is unusable (the entry is then skipped and
counted like any malformed entry); :func:`phrase_regions` turns a batch's phrases into the tensors the
``grounding`` objective reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlkit.core.batch import PhraseRegions


@dataclass(frozen=True)
class PhraseBox:
    """One grounded phrase: characters ``[start, end)`` of its caption and its box ``(left, top,
    right, bottom)`` — in pixels in an annotation entry, as fractions of the image side in a sample."""

    start: int
    end: int
    box: tuple[float, float, float, float]

    def normalized(self, width: int, height: int) -> PhraseBox:
        """The box as fractions of an image of ``width`` × ``height`` pixels (clamped to [0, 1])."""
        left, top, right, bottom = self.box
        scale = (width, height, width, height)
        return PhraseBox(self.start, self.end, tuple(min(max(v / s, 0.0), 1.0)  # type: ignore[arg-type]
                                                     for v, s in zip((left, top, right, bottom), scale, strict=True)))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _phrase_problem(phrase: Any, caption: str) -> str | None:
    if not isinstance(phrase, dict):
        return "a phrase that is not a mapping"
    span, box = phrase.get("span"), phrase.get("box")
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in span)):
        return "a phrase `span` that is not [start, end]"
    if not 0 <= span[0] < span[1] <= len(caption):
        return f"a phrase span {span} outside its caption of {len(caption)} characters"
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        return "a phrase `box` that is not [left, top, right, bottom]"
    if not (box[0] < box[2] and box[1] < box[3]):
        return f"an empty phrase box {box}"
    return None


def phrases_problem(item: dict[str, Any], captions: list[str]) -> str | None:
    """Why an entry's optional ``phrases`` field is unusable, or None (also when it is absent)."""
    phrases = item.get("phrases")
    if phrases is None:
        return None
    if not isinstance(phrases, list) or len(phrases) != len(captions):
        return f"`phrases` must be a list with one list per caption ({len(captions)})"
    for per_caption, caption in zip(phrases, captions, strict=True):
        if not isinstance(per_caption, list):
            return "`phrases` must hold one list of phrases per caption"
        for phrase in per_caption:
            problem = _phrase_problem(phrase, caption)
            if problem is not None:
                return problem
    return None


def read_phrases(item: dict[str, Any]) -> tuple[tuple[PhraseBox, ...], ...] | None:
    """The entry's phrases per caption (validated by :func:`phrases_problem` first), or None."""
    phrases = item.get("phrases")
    if phrases is None:
        return None
    return tuple(tuple(PhraseBox(p["span"][0], p["span"][1], tuple(float(v) for v in p["box"]))  # type: ignore[arg-type]
                       for p in per_caption) for per_caption in phrases)


def phrase_regions(phrases: list[tuple[PhraseBox, ...]], offsets: list[list[tuple[int, int]]],
                   length: int) -> PhraseRegions:
    """Match each phrase to the tokens whose characters lie inside its span.

    Args:
        phrases: per batch row, its caption's phrases (boxes normalized).
        offsets: per row, each token's character span (:attr:`TokenizedText.offsets`).
        length: ``L``, the token width of the batch.

    Returns:
        the phrases that kept at least one token; the others are counted in ``dropped``.
    """
    rows, masks, boxes, dropped = [], [], [], 0
    for row, (row_phrases, row_offsets) in enumerate(zip(phrases, offsets, strict=True)):
        for p in row_phrases:
            mask = [end > start and start >= p.start and end <= p.end for start, end in row_offsets[:length]]
            if not any(mask):
                dropped += 1
                continue
            left, top, right, bottom = p.box
            rows.append(row)
            masks.append(mask + [False] * (length - len(mask)))
            boxes.append(((left + right) / 2, (top + bottom) / 2, right - left, bottom - top))
    return PhraseRegions(torch.tensor(rows, dtype=torch.long),
                         torch.tensor(masks, dtype=torch.bool).view(len(rows), length),
                         torch.tensor(boxes, dtype=torch.float32).view(len(rows), 4), dropped)
