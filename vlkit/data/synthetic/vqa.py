"""VQA annotations (ALBEF ``vqa_*.json`` style): questions about colour, shape, size, counts,
existence and relations, with several noisy annotator answers whose majority is the true answer.

:func:`answer` reads a question's text and answers it from the scene; questions whose referent is not
unique (or whose relation is ambiguous) are never asked.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vlkit.data.synthetic.captions import SYNONYM_P, pick
from vlkit.data.synthetic.lexicon import COLORS, OPPOSITE, RELATION_WORDS, SHAPE_WORDS, SHAPES, SIZES
from vlkit.data.synthetic.scene import Obj, Scene, clear_relations, relation_holds
from vlkit.data.synthetic.semantics import Desc, ParseError, parse_desc, words

TEMPLATES: dict[str, str] = {
    "color": "what color is the {shape}?",
    "shape": "what shape is the {color} object?",
    "count": "how many {noun} are there?",
    "count_color": "how many {color} objects are there?",
    "exists": "is there a {color} {shape}?",
    "size": "is the {color} {shape} {sizes}?",
    "relation": "what is {rel} the {color} {shape}?",
    "relation_color": "what color is the object {rel} the {color} {shape}?",
}
COUNT_ANSWERS = tuple(str(n) for n in range(5))
KIND_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "count": COUNT_ANSWERS, "count_color": COUNT_ANSWERS,
    "exists": ("yes", "no"), "size": SIZES, "relation": tuple(f"{c} {s}" for c in COLORS for s in SHAPES),
    "relation_color": tuple(COLORS),
}
_REL_PHRASES = "|".join(sorted((p for ps in RELATION_WORDS.values() for p in ps), key=len, reverse=True))
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("count", re.compile(r"how many (?:objects|shapes) are there \?")),
    ("count_color", re.compile(r"how many (\w+) objects are there \?")),
    ("relation_color", re.compile(rf"what color is the object ({_REL_PHRASES}) the (.+) \?")),
    ("color", re.compile(r"what color is the (.+) \?")),
    ("shape", re.compile(r"what shape is the (.+) \?")),
    ("exists", re.compile(r"is there a (.+) \?")),
    ("size", re.compile(r"is the (.+) (?:small or large|large or small|big or small|small or big) \?")),
    ("relation", re.compile(rf"what is ({_REL_PHRASES}) the (.+) \?")),
]


def _desc(text: str) -> Desc:
    tokens = text.split()
    desc, end = parse_desc(tokens, 0)
    if end != len(tokens):
        raise ParseError(f"trailing words in {text!r}")
    return desc


def _the(desc: Desc, scene: Scene) -> Obj | None:
    hits = [o for o in scene.objects if desc.matches(o)]
    return hits[0] if len(hits) == 1 else None


def _related(scene: Scene, ref: Obj, relation: str) -> Obj | None:
    """The one object clearly ``relation`` ``ref``, if no other object is even leniently so."""
    others = [o for o in scene.objects if o is not ref]
    clear = [o for o in others if relation in clear_relations(o, ref, scene.size)]
    loose = [o for o in others if relation_holds(o, ref, relation, scene.size)]
    return clear[0] if len(clear) == 1 and len(loose) == 1 else None


def answer(question: str, scene: Scene) -> tuple[str, str] | None:
    """``(kind, answer)`` for a question of :data:`TEMPLATES`, or ``None`` if it has no clear answer."""
    text = " ".join(words(question))
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        if kind == "count":
            return kind, str(len(scene.objects))
        if kind == "count_color":
            return kind, str(sum(o.color == m.group(1) for o in scene.objects))
        if kind == "exists":
            return kind, "yes" if any(_desc(m.group(1)).matches(o) for o in scene.objects) else "no"
        if kind in ("relation", "relation_color"):
            rel = next(r for r, ps in RELATION_WORDS.items() if m.group(1) in ps)
            ref = _the(_desc(m.group(2)), scene)
            hit = _related(scene, ref, rel) if ref is not None else None
            if hit is None:
                return None
            return kind, hit.color if kind == "relation_color" else f"{hit.color} {hit.shape}"
        obj = _the(_desc(m.group(1)), scene)
        if obj is None:
            return None
        return kind, {"color": obj.color, "shape": obj.shape, "size": obj.size}[kind]
    raise ParseError(f"not a known question: {question!r}")


def ask(rng: np.random.Generator, scene: Scene, kind: str) -> str:
    """A question of ``kind`` about the scene (it may still turn out to have no clear answer)."""
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    shape = pick(rng, SHAPE_WORDS[o.shape], SYNONYM_P)
    fill: dict[str, Any] = {"shape": shape, "color": o.color, "noun": pick(rng, ("objects", "shapes"))}
    if kind == "exists" and rng.random() < 0.5:  # a random object: mostly absent
        fill["color"] = pick(rng, tuple(COLORS))
        fill["shape"] = pick(rng, SHAPE_WORDS[pick(rng, SHAPES)], SYNONYM_P)
    elif kind == "count_color" and rng.random() < 0.3:
        fill["color"] = pick(rng, tuple(COLORS))
    elif kind == "size":
        fill["sizes"] = pick(rng, ("small or large", "large or small", "big or small", "small or big"))
    elif kind in ("relation", "relation_color"):
        rels = [r for p in scene.objects if p is not o for r in clear_relations(p, o, scene.size)]
        rel = rels[int(rng.integers(len(rels)))] if rels else pick(rng, tuple(OPPOSITE))
        fill["rel"] = pick(rng, RELATION_WORDS[rel], SYNONYM_P)
    return TEMPLATES[kind].format(**fill)


def annotate(rng: np.random.Generator, kind: str, truth: str, annotators: int, noise: float) -> list[str]:
    """Annotator answers: each wrong with probability ``noise``; the truth always has a strict majority."""
    wrong = [a for a in KIND_ANSWERS[kind] if a != truth]
    answers = [pick(rng, wrong) if rng.random() < noise else truth for _ in range(annotators)]
    need = annotators // 2 + 1
    for k in range(annotators):
        if answers.count(truth) >= need:
            break
        answers[k] = truth
    return answers


def vqa_records(
    scenes: list[Scene], rng: np.random.Generator, *, per_image: int, annotators: int, noise: float
) -> list[dict[str, Any]]:
    """``per_image`` distinct questions per image; ``question_id = image_id * 100 + k``."""
    records: list[dict[str, Any]] = []
    kinds = list(TEMPLATES)
    for scene in scenes:
        asked: set[str] = set()
        for k in range(per_image):
            for _ in range(30):
                question = ask(rng, scene, kinds[int(rng.integers(len(kinds)))])
                got = answer(question, scene)
                if got is not None and question not in asked:
                    break
            else:
                continue
            asked.add(question)
            records.append({"question_id": scene.image_id * 100 + k, "image": scene.image, "question": question,
                            "answer": annotate(rng, got[0], got[1], annotators, noise)})
    return records
