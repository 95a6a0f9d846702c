"""Single-label image classification data: an ImageNet-style folder of class sub-folders, or a JSON
list of ``{"image", "label"}``. Evaluation splits: a malformed entry is an error, not skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlkit.data.image_files import list_images
from vlkit.data.json_dataset import AnnotationError, read_annotation_list


@dataclass
class Classification:
    """Images (paths), their labels (indices into ``classes``) and the class names."""

    images: list[Path]
    labels: list[int]
    classes: list[str]


def folder_classification(root: Path, names: list[str] | None) -> Classification:
    """Images of ``root/<class>/...``; classes in sorted folder order."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise AnnotationError(f"{root}: no class sub-folders")
    if names is not None and len(names) != len(folders):
        raise AnnotationError(f"{root}: {len(folders)} class folders but {len(names)} class names")
    images, labels = [], []
    for label, folder in enumerate(folders):
        found = list_images([folder])
        images += found
        labels += [label] * len(found)
    return Classification(images, labels, names or [f.name.replace("_", " ") for f in folders])


def annotation_classification(file: Path, image_root: Path, names: list[str] | None) -> Classification:
    """A JSON list of ``{"image", "label"}``; every entry must be well-formed (an evaluation split)."""
    items = read_annotation_list(file, "{image, label}")
    string_labels = sorted({i["label"] for i in items if isinstance(i, dict) and isinstance(i.get("label"), str)})
    classes = names or string_labels
    images, labels = [], []
    for index, item in enumerate(items):
        label = item.get("label") if isinstance(item, dict) else None
        if isinstance(label, str):
            label = classes.index(label) if label in classes else None
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(label, int) \
                or not 0 <= label < len(classes):
            raise AnnotationError(f"{file}: entry {index} needs an `image` path and a `label` that is a class "
                                  f"index below {len(classes)} or one of the class names")
        images.append(image_root / item["image"])
        labels.append(label)
    return Classification(images, labels, classes)
