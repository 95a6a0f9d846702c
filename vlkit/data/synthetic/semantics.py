"""Meaning of generated text: a parser from statements to claims and their truth on a scene.

Statements are read existentially: "a red circle above a blue box" is true when some red circle is
(visibly) above some blue square. Relations are checked leniently (:func:`relation_holds` with the small
truth margin) while the generator only states clear ones, so a generated statement is clearly true and
a swapped one (whose truth is checked leniently) is clearly false.

Neutral statements predicate a property the renderer never draws (material, weight, temperature,
softness, wetness) of an object that *is* in the scene: the image cannot decide them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlkit.data.synthetic.lexicon import (
    COLORS,
    COUNT_WORDS,
    GENERIC_NOUNS,
    MATERIALS,
    PHRASE_TO_RELATION,
    UNRENDERED_ADJECTIVES,
    WORD_TO_SHAPE,
    WORD_TO_SIZE,
)
from vlkit.data.synthetic.scene import Obj, Scene, relation_holds

_FILLERS = frozenset({"there", "is", "are", "an", "image", "of", "and", "with", ",", ":"})
_DETERMINERS = frozenset({"a", "the"})
_PHRASES = sorted(PHRASE_TO_RELATION, key=len, reverse=True)  # longest first: "to the left of" before "left of"


class ParseError(ValueError):
    """Text outside the grammar of the generator."""


@dataclass(frozen=True)
class Desc:
    """A description of an object; ``None`` fields are unconstrained."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, o: Obj) -> bool:
        """Whether object ``o`` fits the description."""
        return all(want is None or want == have for want, have in ((self.shape, o.shape), (self.color, o.color),
                                                                     (self.size, o.size)))


@dataclass(frozen=True)
class Exists:
    """Some object fits ``desc``."""

    desc: Desc


@dataclass(frozen=True)
class Related:
    """Some object fitting ``a`` is ``relation`` some other object fitting ``b``."""

    a: Desc
    relation: str
    b: Desc


@dataclass(frozen=True)
class CountIs:
    """The scene holds exactly ``n`` objects."""

    n: int


@dataclass(frozen=True)
class Unrendered:
    """An object fitting ``desc`` has a property the image does not show (``predicate``)."""

    desc: Desc
    predicate: str


Claim = Exists | Related | CountIs | Unrendered


def words(text: str) -> list[str]:
    """Lower-cased words with ``,`` ``:`` ``?`` split off as words of their own."""
    for mark in ",:?":
        text = text.replace(mark, f" {mark} ")
    return text.lower().split()


def parse_desc(tokens: list[str], i: int) -> tuple[Desc, int]:
    """Parse ``[size] [colour] noun`` at ``tokens[i]``; returns the description and the next index."""
    size = color = None
    if i < len(tokens) and tokens[i] in WORD_TO_SIZE:
        size, i = WORD_TO_SIZE[tokens[i]], i + 1
    if i < len(tokens) and tokens[i] in COLORS:
        color, i = tokens[i], i + 1
    if i >= len(tokens) or (tokens[i] not in WORD_TO_SHAPE and tokens[i] not in GENERIC_NOUNS):
        raise ParseError(f"expected a noun at word {i} of {' '.join(tokens)!r}")
    return Desc(WORD_TO_SHAPE.get(tokens[i]), color, size), i + 1


def _relation_at(tokens: list[str], i: int) -> tuple[str, int] | None:
    for phrase in _PHRASES:
        if tuple(tokens[i:i + len(phrase)]) == phrase:
            return PHRASE_TO_RELATION[phrase], i + len(phrase)
    return None


def parse(text: str) -> list[Claim]:
    """The claims a statement makes (captions, swapped captions, VE sentences, NLVR fragments)."""
    tokens = words(text)
    claims: list[Claim] = []
    prev: Desc | None = None
    pending: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        rel = _relation_at(tokens, i)
        if rel is not None:
            if prev is None or pending is not None:
                raise ParseError(f"relation without a subject in {text!r}")
            pending, i = rel
        elif tok in COUNT_WORDS and i + 1 < len(tokens) and tokens[i + 1].rstrip("s") in GENERIC_NOUNS:
            claims.append(CountIs(COUNT_WORDS.index(tok)))
            i += 2
        elif tok in _DETERMINERS:
            if tokens[i + 1:i + 2] == ["single"]:  # "a single red circle": the only object
                claims.append(CountIs(1))
                i += 1
            desc, i = parse_desc(tokens, i + 1)
            claims.append(Related(prev, pending, desc) if pending and prev else Exists(desc))
            prev, pending = desc, None
        elif tok == "is" and prev is not None and i + 1 < len(tokens) and tokens[i + 1] in UNRENDERED_ADJECTIVES:
            claims.append(Unrendered(prev, tokens[i + 1]))
            i += 2
        elif tok == "is" and prev is not None and tokens[i + 1:i + 3] == ["made", "of"]:
            if i + 3 >= len(tokens) or tokens[i + 3] not in MATERIALS:
                raise ParseError(f"unknown material in {text!r}")
            claims.append(Unrendered(prev, tokens[i + 3]))
            i += 4
        elif tok in _FILLERS:
            i += 1
        else:
            raise ParseError(f"unexpected word {tok!r} in {text!r}")
    if pending is not None:
        raise ParseError(f"relation without an object in {text!r}")
    return claims


def holds(claim: Claim, scene: Scene) -> bool:
    """Whether a claim is true of the scene (for :class:`Unrendered`: whether its object exists)."""
    objs = scene.objects
    if isinstance(claim, (Exists, Unrendered)):
        return any(claim.desc.matches(o) for o in objs)
    if isinstance(claim, CountIs):
        return len(objs) == claim.n
    return any(
        i != j and claim.a.matches(a) and claim.b.matches(b) and relation_holds(a, b, claim.relation, scene.size)
        for i, a in enumerate(objs)
        for j, b in enumerate(objs)
    )


def is_true(text: str, scene: Scene) -> bool:
    """Whether every rendered claim of the statement holds (and unrendered ones have their object)."""
    return all(holds(c, scene) for c in parse(text))


def entailment_label(text: str, scene: Scene) -> str:
    """``contradiction`` if some claim fails, else ``neutral`` if it predicates an unrendered property,
    else ``entailment``."""
    claims = parse(text)
    if not all(holds(c, scene) for c in claims):
        return "contradiction"
    return "neutral" if any(isinstance(c, Unrendered) for c in claims) else "entailment"
