"""Single-label classification on the synthetic world, for zero-shot evaluation: an image's class is
an attribute (colour or shape) of its largest object. Images whose largest objects tie in size but
differ in that attribute are left out (their class would be ambiguous)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vlkit.data.formats.classification import Classification
from vlkit.data.synthetic.lexicon import COLORS, SHAPES
from vlkit.data.synthetic.writer import read_scenes

Attribute = Literal["color", "shape"]


def largest_object_classes(folder: str | Path, split: str, attribute: Attribute = "color") -> Classification:
    """The ``attribute`` of each image's largest object in ``split`` of the dataset at ``folder``."""
    classes = list(COLORS) if attribute == "color" else list(SHAPES)
    images, labels = [], []
    for scene in read_scenes(folder, split):
        biggest = max(o.extent for o in scene.objects)
        values = {o.color if attribute == "color" else o.shape for o in scene.objects if o.extent == biggest}
        if len(values) == 1:
            images.append(Path(folder) / scene.image)
            labels.append(classes.index(values.pop()))
    return Classification(images, labels, classes)
