"""Captions from a small grammar, and swapped captions for the compositional probe.

A caption is a frame with noun-phrase slots (``"there is a {0} above a {1}"``) and the phrases that fill
them (``[size] colour shape``, with a few synonyms). Swaps permute words only:

- ``attribute``: the colour words (else the shape words, else the size words) of the two phrases trade
  places: "a red circle above a blue box" -> "a blue circle above a red box";
- ``relation``: the two phrases trade places, which reverses the relation: -> "a blue box above a red
  circle".

Either way the swapped caption has the same multiset of words; it is kept only if it is false for the
scene (checked with :mod:`~vlkit.data.synthetic.semantics`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from string import Formatter

import numpy as np

from vlkit.data.synthetic.lexicon import COUNT_WORDS, RELATION_WORDS, SHAPE_WORDS, SIZE_WORDS
from vlkit.data.synthetic.scene import Obj, Scene, clear_relations
from vlkit.data.synthetic.semantics import is_true

SIZE_WORD_P = 0.4  # how often a phrase mentions the size
SYNONYM_P = 0.3  # how often a synonym replaces the canonical word

SINGLE_FRAMES = ("a {0}", "there is a {0}", "an image of a {0}", "one shape: a {0}", "a single {0}")
RELATION_FRAMES = (
    "a {0} REL a {1}", "there is a {0} REL a {1}", "the {0} is REL the {1}", "an image of a {0} REL a {1}",
)
COUNT_FRAMES = ("COUNT shapes, with a {0} REL a {1}", "COUNT objects with a {0} REL a {1}")
LIST_HEADS = ("COUNT shapes: ", "COUNT objects: ", "")


@dataclass(frozen=True)
class Phrase:
    """The content words of a noun phrase (no determiner)."""

    color: str | None
    shape: str
    size: str | None = None

    def text(self) -> str:
        """``[size] [colour] shape``."""
        return " ".join(w for w in (self.size, self.color, self.shape) if w)


@dataclass(frozen=True)
class Caption:
    """A frame and its phrases; ``relational`` when slots ``{0}`` and ``{1}`` are related by the frame.
    ``objects`` names the scene object each phrase describes (indices into ``Scene.objects``; empty for
    a swapped caption, whose phrases describe no object)."""

    frame: str
    phrases: tuple[Phrase, ...]
    relational: bool = False
    objects: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The caption as a string."""
        return self.frame.format(*(p.text() for p in self.phrases))

    def phrase_spans(self) -> list[tuple[int, int]]:
        """Per phrase, its ``(start, end)`` character span in :attr:`text` (end exclusive)."""
        spans: dict[int, tuple[int, int]] = {}
        at = 0
        for literal, slot, _, _ in Formatter().parse(self.frame):
            at += len(literal)
            if slot is not None:
                words = self.phrases[int(slot)].text()
                spans[int(slot)] = (at, at + len(words))
                at += len(words)
        return [spans[k] for k in range(len(self.phrases))]


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str], synonym_p: float | None = None) -> str:
    """A uniform choice, or (``synonym_p`` given) the first option unless a synonym is drawn."""
    if synonym_p is not None:
        if len(options) > 1 and rng.random() < synonym_p:
            return options[int(rng.integers(1, len(options)))]
        return options[0]
    return options[int(rng.integers(len(options)))]


def phrase(rng: np.random.Generator, o: Obj, *, size_p: float = SIZE_WORD_P, color: bool = True) -> Phrase:
    """A phrase for object ``o`` (always the shape, usually the colour, sometimes the size)."""
    size = pick(rng, SIZE_WORDS[o.size], SYNONYM_P) if rng.random() < size_p else None
    shape = pick(rng, SHAPE_WORDS[o.shape], SYNONYM_P)
    return Phrase(o.color if color else None, shape, size)


def relation_caption(rng: np.random.Generator, scene: Scene, i: int, j: int, frames: tuple[str, ...]) -> Caption:
    """A caption relating objects ``i`` and ``j`` (in a random order) by one of their clear relations."""
    if rng.random() < 0.5:
        i, j = j, i
    a, b = scene.objects[i], scene.objects[j]
    rels = clear_relations(a, b, scene.size)
    rel = pick(rng, RELATION_WORDS[rels[int(rng.integers(len(rels)))]], SYNONYM_P)
    frame = pick(rng, frames).replace("REL", rel).replace("COUNT", COUNT_WORDS[len(scene.objects)])
    return Caption(frame, (phrase(rng, a), phrase(rng, b)), relational=True, objects=(i, j))


def list_caption(rng: np.random.Generator, scene: Scene) -> Caption:
    """A caption naming every object, optionally after a count."""
    n = len(scene.objects)
    order = [int(k) for k in rng.permutation(n)]
    slots = [f"a {{{k}}}" for k in range(n)]
    body = " and ".join(slots) if n == 2 else ", ".join(slots[:-1]) + " and " + slots[-1]
    head = pick(rng, LIST_HEADS).replace("COUNT", COUNT_WORDS[n])
    return Caption(head + body, tuple(phrase(rng, scene.objects[k]) for k in order), objects=tuple(order))


def captions_for(scene: Scene, count: int) -> list[Caption]:
    """``count`` distinct captions (fewer only if the grammar runs out). The first ones relate the
    scene's focus pair; a twin draws the same random numbers as its original (same ``seed``)."""
    rng = np.random.default_rng([scene.seed, 99])
    n = len(scene.objects)
    out: list[Caption] = []
    plan = ["focus", "focus", "list", "pair", "count", "pair"] if n >= 2 else ["single"]
    for k in range(count):
        slot = plan[k % len(plan)]
        for _ in range(12):
            if slot == "single":
                cap = Caption(pick(rng, SINGLE_FRAMES), (phrase(rng, scene.objects[0]),), objects=(0,))
            elif slot == "list":
                cap = list_caption(rng, scene)
            else:
                i, j = scene.focus if slot == "focus" and scene.focus else sorted(
                    int(v) for v in rng.choice(n, size=2, replace=False))
                cap = relation_caption(rng, scene, i, j, COUNT_FRAMES if slot == "count" else RELATION_FRAMES)
            if cap.text not in {c.text for c in out}:
                out.append(cap)
                break
    return out


def swap(caption: Caption, kind: str) -> Caption | None:
    """The caption with two attributes of its first two phrases (``attribute``) or its related phrases
    (``relation``, relational captions only) swapped; ``None`` when the swap would not change the text."""
    if len(caption.phrases) < 2 or (kind == "relation" and not caption.relational):
        return None
    p, q = caption.phrases[0], caption.phrases[1]
    if kind == "relation":
        swapped = (q, p)
    else:
        for field, u, v in (("color", p.color, q.color), ("shape", p.shape, q.shape), ("size", p.size, q.size)):
            if u is not None and v is not None and u != v:
                swapped = (replace(p, **{field: v}), replace(q, **{field: u}))
                break
        else:
            return None
    out = Caption(caption.frame, swapped + caption.phrases[2:], relational=caption.relational)
    return out if out.text != caption.text else None


def hard_negatives(caption: Caption, scene: Scene) -> list[str]:
    """The caption's attribute and relation swaps that are false for ``scene`` (NegCLIP-style training
    negatives; the same construction as the val/test probes, on the training images)."""
    out = []
    for kind in ("attribute", "relation"):
        s = swap(caption, kind)
        if s is not None and not is_true(s.text, scene):
            out.append(s.text)
    return out


def swap_probes(scene: Scene, captions: list[Caption], limit: int) -> list[tuple[str, str, str]]:
    """Up to ``limit`` ``(caption, swapped, kind)`` triples, alternating attribute and relation swaps
    (on different captions where possible); each swapped caption is verified false for the scene."""
    out: list[tuple[str, str, str]] = []
    relational = [c for c in captions if c.relational]
    for k, kind in enumerate(("attribute", "relation")[:limit]):
        for c in relational[k:] + relational[:k]:
            s = swap(c, kind)
            if s is not None and is_true(c.text, scene) and not is_true(s.text, scene):
                out.append((c.text, s.text, kind))
                break
    return out
