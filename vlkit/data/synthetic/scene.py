"""Scenes of the synthetic world: sampling, geometry of relations and compositional twins.

Coordinates are pixels of the final image (``x`` right, ``y`` down); an object occupies the square box
of side ``extent`` centred on ``(x, y)``. Within a scene the (colour, shape) pairs are distinct, so
``the red circle`` always names one object; boxes keep a gap of a pixel or two, so objects never
overlap. A scene's ``seed`` drives its background noise and its captions: a twin copies the seed of
its original, so it has the same background and captions that read as the original's with the swap
applied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from vlkit.data.synthetic.lexicon import COLORS, RELATIONS, SHAPES

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
BACKGROUNDS: tuple[str, ...] = ("flat", "noise", "stripes", "gradient", "checker")
TWIN_KINDS: tuple[str, ...] = ("color", "shape", "position")
_COUNT_WEIGHTS: tuple[float, ...] = (0.15, 0.40, 0.30, 0.15)  # 1, 2, 3, 4 objects (crowded scenes are rarer)
_COMBOS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLORS, SHAPES))


@dataclass(frozen=True)
class Obj:
    """One object: what it is and where (pixels of the final image)."""

    shape: str
    color: str
    size: str
    x: int
    y: int
    extent: int

    def box(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` of the object's square box."""
        half = self.extent / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)


@dataclass(frozen=True)
class Background:
    """A low-contrast background texture: ``kind`` in :data:`BACKGROUNDS`, a dark ``base`` tint and a
    small ``amplitude`` of variation; ``period``/``orientation`` shape stripes, checkers and gradients."""

    kind: str
    base: tuple[int, int, int]
    amplitude: int
    period: int
    orientation: int
    seed: int


@dataclass(frozen=True)
class Scene:
    """An image's content. ``focus`` is the pair of objects its first captions relate (the swapped pair
    for twins); ``twin_of``/``twin_kind`` are set on a twin (kind in :data:`TWIN_KINDS`)."""

    image_id: int
    split: str
    index: int
    size: int
    objects: tuple[Obj, ...]
    background: Background
    seed: int
    focus: tuple[int, int] | None = None
    twin_of: int | None = None
    twin_kind: str | None = None

    @property
    def image(self) -> str:
        """Path of the image relative to the dataset folder."""
        return f"images/{self.split}/{self.index:06d}.png"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``image`` included)."""
        data = asdict(self)
        data["image"] = self.image
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`."""
        bg = dict(data["background"])
        bg["base"] = tuple(bg["base"])
        return cls(
            image_id=data["image_id"], split=data["split"], index=data["index"], size=data["size"],
            objects=tuple(Obj(**o) for o in data["objects"]), background=Background(**bg), seed=data["seed"],
            focus=tuple(data["focus"]) if data["focus"] is not None else None,
            twin_of=data["twin_of"], twin_kind=data["twin_kind"],
        )


# ----------------------------------------------------------------------------------------------- geometry
def extent_range(size: str, image_size: int) -> tuple[int, int]:
    """Inclusive range of box sides for ``size`` ("small" ~ 22-27 %, "large" ~ 36-42 % of the image)."""
    lo, hi = (0.22, 0.27) if size == "small" else (0.36, 0.42)
    return round(lo * image_size), round(hi * image_size)


def clear_gap(image_size: int) -> int:
    """Minimum centre offset for a relation to be stated (the smallest object side). Two boxes that do
    not overlap are always at least this far apart along one axis, so every pair has a clear relation."""
    return extent_range("small", image_size)[0]


def truth_margin(image_size: int) -> int:
    """Centre offset above which a relation counts as true when checking a statement (lenient)."""
    return max(1, round(0.05 * image_size))


def offset(a: Obj, b: Obj, relation: str) -> float:
    """How far ``a`` is in direction ``relation`` from ``b`` (e.g. ``above``: ``b.y - a.y``)."""
    return {"left": b.x - a.x, "right": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[relation]


def relation_holds(a: Obj, b: Obj, relation: str, image_size: int, *, clear: bool = False) -> bool:
    """Whether "``a`` is ``relation`` ``b``": leniently (any visible offset) or clearly (see :func:`clear_gap`)."""
    limit = clear_gap(image_size) if clear else truth_margin(image_size)
    return offset(a, b, relation) >= limit


def clear_relations(a: Obj, b: Obj, image_size: int) -> list[str]:
    """Relations ``r`` (in :data:`RELATIONS` order) with "``a`` is clearly ``r`` ``b``"."""
    return [r for r in RELATIONS if relation_holds(a, b, r, image_size, clear=True)]


def inside(o: Obj, image_size: int) -> bool:
    """Whether the object's box lies in the image with a one-pixel border."""
    left, top, right, bottom = o.box()
    return left >= 1 and top >= 1 and right <= image_size - 1 and bottom <= image_size - 1


def apart(a: Obj, b: Obj, image_size: int) -> bool:
    """Whether two boxes keep the minimum gap (they do not overlap)."""
    gap = max(1, image_size // 32)
    la, ta, ra, ba = a.box()
    lb, tb, rb, bb = b.box()
    return ra + gap <= lb or rb + gap <= la or ba + gap <= tb or bb + gap <= ta


def valid_layout(objects: tuple[Obj, ...], image_size: int) -> bool:
    """Inside the image, pairwise apart, distinct (colour, shape) pairs."""
    if len({(o.color, o.shape) for o in objects}) != len(objects):
        return False
    if not all(inside(o, image_size) for o in objects):
        return False
    return all(apart(a, b, image_size) for a, b in itertools.combinations(objects, 2))


# ----------------------------------------------------------------------------------------------- sampling
def sample_count(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Number of objects in ``[lo, hi]`` (two and three objects are the most common)."""
    counts = list(range(lo, hi + 1))
    weights = np.array([_COUNT_WEIGHTS[min(c, len(_COUNT_WEIGHTS)) - 1] for c in counts])
    return int(rng.choice(counts, p=weights / weights.sum()))


def sample_objects(rng: np.random.Generator, count: int, image_size: int) -> tuple[Obj, ...]:
    """``count`` objects with distinct (colour, shape) pairs placed without overlap."""
    for attempt in range(1000):
        combos = [_COMBOS[int(i)] for i in rng.choice(len(_COMBOS), size=count, replace=False)]
        large_p = 0.5 if attempt < 20 else 0.2  # crowded scenes fall back to smaller objects
        sizes = ["large" if rng.random() < large_p else "small" for _ in range(count)]
        extents = [int(rng.integers(lo, hi + 1)) for lo, hi in (extent_range(s, image_size) for s in sizes)]
        placed: dict[int, Obj] = {}
        for i in sorted(range(count), key=lambda k: -extents[k]):  # big boxes first
            half = extents[i] / 2
            lo, hi = math.ceil(1 + half), math.floor(image_size - 1 - half)
            for _ in range(60):
                obj = Obj(combos[i][1], combos[i][0], sizes[i], int(rng.integers(lo, hi + 1)),
                          int(rng.integers(lo, hi + 1)), extents[i])
                if all(apart(obj, other, image_size) for other in placed.values()):
                    placed[i] = obj
                    break
            else:
                break
        if len(placed) == count:
            return tuple(placed[i] for i in range(count))
    raise RuntimeError(f"cannot place {count} objects in a {image_size}px image")


def sample_background(rng: np.random.Generator, image_size: int) -> Background:
    """A dark, desaturated, low-contrast texture."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    grey = int(rng.integers(30, 62))
    base = tuple(int(np.clip(grey + t, 0, 255)) for t in rng.integers(-8, 9, size=3))
    amplitude = 0 if kind == "flat" else int(rng.integers(4, 11))
    period = max(3, round(float(rng.uniform(0.06, 0.16)) * image_size))
    return Background(kind, base, amplitude, period, int(rng.integers(4)), int(rng.integers(2**31)))  # type: ignore[arg-type]


def swap_pair(objects: tuple[Obj, ...], kind: str, i: int, j: int) -> tuple[Obj, ...]:
    """Objects with the colours, shapes or positions of objects ``i`` and ``j`` exchanged."""
    a, b = objects[i], objects[j]
    if kind == "color":
        a2, b2 = replace(a, color=b.color), replace(b, color=a.color)
    elif kind == "shape":
        a2, b2 = replace(a, shape=b.shape), replace(b, shape=a.shape)
    elif kind == "position":
        a2, b2 = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
    else:
        raise ValueError(f"unknown twin kind {kind!r}")
    out = list(objects)
    out[i], out[j] = a2, b2
    return tuple(out)


def make_twin(
    rng: np.random.Generator, objects: tuple[Obj, ...], image_size: int
) -> tuple[tuple[Obj, ...], str, tuple[int, int]] | None:
    """A valid twin layout ``(objects, kind, (i, j))``: kind drawn uniformly among feasible ones."""
    pairs = list(itertools.combinations(range(len(objects)), 2))
    for k in rng.permutation(len(TWIN_KINDS)):
        kind = TWIN_KINDS[int(k)]
        for p in rng.permutation(len(pairs)):
            i, j = pairs[int(p)]
            a, b = objects[i], objects[j]
            if (kind == "color" and a.color == b.color) or (kind == "shape" and a.shape == b.shape):
                continue
            twin = swap_pair(objects, kind, i, j)
            if valid_layout(twin, image_size):
                return twin, kind, (i, j)
    return None


def sample_split(
    split: str, count: int, first_id: int, *, seed: int, image_size: int, min_objects: int, max_objects: int,
    twin_fraction: float,
) -> list[Scene]:
    """The scenes of one split. Each original scene gets, with probability ``twin_fraction``, a twin
    placed right after it (so twins are about ``f / (1 + f)`` of the images)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 17])
    scenes: list[Scene] = []

    def add(objects: tuple[Obj, ...], bg: Background, scene_seed: int, focus: tuple[int, int] | None,
            twin_of: int | None = None, twin_kind: str | None = None) -> Scene:
        scene = Scene(first_id + len(scenes), split, len(scenes), image_size, objects, bg, scene_seed, focus,
                      twin_of, twin_kind)
        scenes.append(scene)
        return scene

    while len(scenes) < count:
        want_twin = max_objects >= 2 and len(scenes) + 2 <= count and rng.random() < twin_fraction
        lo = max(2, min_objects) if want_twin else min_objects
        twin = None
        for _ in range(100 if want_twin else 1):
            objects = sample_objects(rng, sample_count(rng, lo, max_objects), image_size)
            twin = make_twin(rng, objects, image_size) if want_twin else None
            if twin is not None or not want_twin:
                break
        bg = sample_background(rng, image_size)
        scene_seed = int(rng.integers(2**31))
        if twin is not None:
            original = add(objects, bg, scene_seed, twin[2])
            add(twin[0], bg, scene_seed, twin[2], original.image_id, twin[1])
        else:
            focus = None
            if len(objects) >= 2:
                i, j = sorted(int(v) for v in rng.choice(len(objects), size=2, replace=False))
                focus = (i, j)
            add(objects, bg, scene_seed, focus)
    return scenes
