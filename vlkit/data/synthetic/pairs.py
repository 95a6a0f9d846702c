"""NLVR2-style statements about image pairs and visual-entailment sentences (ALBEF ``nlvr_*.json`` and
``ve_*.json`` styles). Labels are computed from the text by :func:`nlvr_truth` and
:func:`~vlkit.data.synthetic.semantics.entailment_label`; generation draws statements until the label
matches a target that alternates, so the labels are balanced exactly.

Neutral VE rule: a neutral sentence predicates a property the renderer never draws (a material:
"the red circle is made of glass", or "heavy"/"hot"/"cold"/"soft"/"wet") of an object that is in
the image. Nothing in the image can confirm or refute it, while its referent exists (a statement
about an absent object would be a contradiction).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vlkit.data.synthetic.captions import RELATION_FRAMES, SYNONYM_P, pick, relation_caption, swap
from vlkit.data.synthetic.lexicon import (
    COLORS,
    COUNT_WORDS,
    MATERIALS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    UNRENDERED_ADJECTIVES,
)
from vlkit.data.synthetic.scene import Obj, Scene
from vlkit.data.synthetic.semantics import ParseError, entailment_label, is_true, words

VE_LABELS = ("entailment", "neutral", "contradiction")
NLVR_TEMPLATES = (
    "both images contain {a}", "neither image contains {a}", "there is {a} in exactly one image",
    "the {side} image contains {a}", "the {side} image has {more} objects than the {other} image",
    "the two images have the same number of objects", "there are {total} objects in total",
    "both images have exactly {count} objects", "the {side} image contains {rel}",
)
_NLVR_PATTERNS = [re.compile(p) for p in (
    r"both images contain (.+)", r"neither image contains (.+)", r"there is (.+) in exactly one image",
    r"the (left|right) image contains (.+)",
    r"the (left|right) image has (more|fewer) objects than the (left|right) image",
    r"the two images have the same number of objects", r"there are (\w+) objects in total",
    r"both images have exactly (\w+) objects",
)]


def np_words(rng: np.random.Generator, o: Obj) -> str:
    """"a [size] [colour] shape|object" for object ``o`` (sometimes the colour or the shape only)."""
    size = pick(rng, SIZE_WORDS[o.size], SYNONYM_P) if rng.random() < 0.25 else None
    r = rng.random()
    color: str | None = o.color
    shape = pick(rng, SHAPE_WORDS[o.shape], SYNONYM_P)
    if r < 0.15:
        shape = "object"
    elif r < 0.3:
        color = None
    return " ".join(["a"] + [w for w in (size, color, shape) if w])


def random_object(rng: np.random.Generator) -> Obj:
    """An object of random kind (its position is irrelevant: used to name possibly absent objects)."""
    return Obj(pick(rng, SHAPES), pick(rng, tuple(COLORS)), pick(rng, SIZES), 0, 0, 0)


def nlvr_truth(sentence: str, left: Scene, right: Scene) -> bool:
    """Whether an NLVR statement (of :data:`NLVR_TEMPLATES`) holds for the pair."""
    text = " ".join(words(sentence))
    side = {"left": left, "right": right}
    for k, pattern in enumerate(_NLVR_PATTERNS):
        m = pattern.fullmatch(text)
        if m is None:
            continue
        if k == 0:
            return is_true(m.group(1), left) and is_true(m.group(1), right)
        if k == 1:
            return not is_true(m.group(1), left) and not is_true(m.group(1), right)
        if k == 2:
            return is_true(m.group(1), left) != is_true(m.group(1), right)
        if k == 3:
            return is_true(m.group(2), side[m.group(1)])
        if k == 4:
            a, b = len(side[m.group(1)].objects), len(side[m.group(3)].objects)
            return a > b if m.group(2) == "more" else a < b
        if k == 5:
            return len(left.objects) == len(right.objects)
        if k == 6:
            return len(left.objects) + len(right.objects) == COUNT_WORDS.index(m.group(1))
        return len(left.objects) == len(right.objects) == COUNT_WORDS.index(m.group(1))
    raise ParseError(f"not a known NLVR statement: {sentence!r}")


def nlvr_statement(rng: np.random.Generator, left: Scene, right: Scene) -> str:
    """A random statement about the pair, naming mostly objects that are in one of the images."""
    template = pick(rng, NLVR_TEMPLATES)
    scene = left if rng.random() < 0.5 else right
    obj = scene.objects[int(rng.integers(len(scene.objects)))] if rng.random() < 0.75 else random_object(rng)
    side = pick(rng, ("left", "right"))
    fill: dict[str, Any] = {
        "a": np_words(rng, obj), "side": side, "other": "right" if side == "left" else "left",
        "more": pick(rng, ("more", "fewer")), "count": COUNT_WORDS[int(rng.integers(2, 5))],
        "total": COUNT_WORDS[int(rng.integers(2, 9))],
    }
    if "{rel}" in template:
        n = len(scene.objects)
        if n >= 2:
            i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
            cap = relation_caption(rng, scene, i, j, ("a {0} REL a {1}",))
            fill["rel"] = (swap(cap, pick(rng, ("attribute", "relation"))) or cap).text if rng.random() < 0.3 \
                else cap.text
        else:
            template = "the {side} image contains {a}"
    return template.format(**fill)


def nlvr_records(scenes: list[Scene], rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """``count`` statements about random pairs of ``scenes``, labels alternating True / False."""
    records: list[dict[str, Any]] = []
    if len(scenes) < 2:
        return records
    for k in range(count):
        target = k % 2 == 0
        for attempt in range(400):
            if attempt % 8 == 0:
                i, j = (int(v) for v in rng.choice(len(scenes), size=2, replace=False))
            sentence = nlvr_statement(rng, scenes[i], scenes[j])
            if nlvr_truth(sentence, scenes[i], scenes[j]) == target:
                records.append({"images": [scenes[i].image, scenes[j].image], "sentence": sentence,
                                "label": str(target)})
                break
    return records


def ve_sentence(rng: np.random.Generator, scene: Scene, label: str) -> str:
    """A candidate sentence meant to have ``label`` for the scene (checked by the caller)."""
    n = len(scene.objects)
    o = scene.objects[int(rng.integers(n))]
    r = rng.random()
    if label == "neutral":
        what = f"made of {pick(rng, MATERIALS)}" if r < 0.5 else pick(rng, UNRENDERED_ADJECTIVES)
        return f"the {np_words(rng, o)[2:]} is {what}"
    if n >= 2 and r < 0.5:
        i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
        cap = relation_caption(rng, scene, i, j, RELATION_FRAMES)
        if label == "contradiction":
            cap = swap(cap, pick(rng, ("attribute", "relation"))) or cap
        return cap.text
    if r < 0.75:
        return f"there is {np_words(rng, o if label == 'entailment' else random_object(rng))}"
    m = n if label == "entailment" else int(rng.integers(1, 5))
    return "there is one shape" if m == 1 else f"there are {COUNT_WORDS[m]} shapes"


def ve_records(scenes: list[Scene], rng: np.random.Generator, per_image: int) -> list[dict[str, Any]]:
    """``per_image`` sentences per image; labels cycle through :data:`VE_LABELS` (balanced)."""
    records: list[dict[str, Any]] = []
    for scene in scenes:
        for k in range(per_image):
            label = VE_LABELS[(scene.index * per_image + k) % len(VE_LABELS)]
            for _ in range(200):
                sentence = ve_sentence(rng, scene, label)
                if entailment_label(sentence, scene) == label:
                    records.append({"image": scene.image, "sentence": sentence, "label": label})
                    break
    return records
