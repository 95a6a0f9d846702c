"""The closed world of the synthetic data: colours, shapes, sizes, relations and their words.

Every word any generated text can contain is listed here (:func:`all_words`), so the tokenizer can be
trained to cover it even when a small training split happens not to use a rare synonym.
"""

from __future__ import annotations

# Saturated, well separated colours (RGB). All are bright or strongly saturated, while backgrounds are
# dark, desaturated and low contrast, so no object is ever hidden by its background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 245),
    "yellow": (240, 222, 50),
    "purple": (165, 70, 225),
    "white": (242, 242, 242),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}

# Surface words. The first entry is canonical (used in answers and most often in text).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
    "cross": ("cross",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
GENERIC_NOUNS: tuple[str, ...] = ("object", "shape")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Properties the renderer never draws: a statement predicating them of a visible object is neutral.
MATERIALS: tuple[str, ...] = ("metal", "wood", "glass", "plastic", "stone")
UNRENDERED_ADJECTIVES: tuple[str, ...] = ("heavy", "hot", "cold", "soft", "wet")

# Reverse look-ups used by the parser.
WORD_TO_SHAPE: dict[str, str] = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
WORD_TO_SIZE: dict[str, str] = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
PHRASE_TO_RELATION: dict[tuple[str, ...], str] = {
    tuple(p.split()): r for r, ps in RELATION_WORDS.items() for p in ps
}

# Fixed phrasing of questions and statements (listed so the tokenizer covers every word).
_FRAME_WORDS = (
    "a an the there is are of image images with and single what color shape how many in "
    "is or than more fewer exactly both neither left right contains contain has have total same number "
    "two images made yes no , : ?"
)


def all_words() -> list[str]:
    """Every word and punctuation mark generated text may contain, sorted."""
    words: set[str] = set(_FRAME_WORDS.split())
    words.update(COLORS, SHAPES, SIZES, GENERIC_NOUNS, COUNT_WORDS, MATERIALS, UNRENDERED_ADJECTIVES)
    words.update(w + "s" for w in GENERIC_NOUNS)
    for table in (SHAPE_WORDS, SIZE_WORDS, RELATION_WORDS):
        for phrases in table.values():
            for phrase in phrases:
                words.update(phrase.split())
    words.update(str(n) for n in range(len(COUNT_WORDS)))
    return sorted(words)
