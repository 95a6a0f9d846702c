"""Referring expressions on the synthetic world, for grounding: "the {colour} {shape}" for every object
whose colour-shape combination is unique in its image, with the object's box."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlkit.data.synthetic.writer import read_scenes


@dataclass(frozen=True)
class Expression:
    """An expression, its image and the referred object's box ``(left, top, right, bottom)`` in pixels
    of the image file (of side ``size``)."""

    image: Path
    text: str
    box: tuple[float, float, float, float]
    size: int


def referring_expressions(folder: str | Path, split: str) -> list[Expression]:
    """Every unambiguous colour-shape expression of ``split``, in scene order."""
    out = []
    for scene in read_scenes(folder, split):
        kinds = [(o.color, o.shape) for o in scene.objects]
        for obj, kind in zip(scene.objects, kinds, strict=True):
            if kinds.count(kind) == 1:
                out.append(Expression(Path(folder) / scene.image, f"the {obj.color} {obj.shape}", obj.box(),
                                      scene.size))
    return out
