"""Generation settings of the synthetic dataset (a plain dataclass of scalars, usable as a recipe
section)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from vlkit.core.errors import ConfigError

FORMAT_VERSION = 4  # 2: records carry `group` (a scene and its twin share it); 3: and `phrases` (grounding);
# 4: and `hard_negatives` (verified-false swaps of each caption)


@dataclass(kw_only=True)
class SynthConfig:
    """Everything that determines the generated files (same config, same bytes).

    Attributes:
        seed: master seed; every random choice derives from it.
        image_size: side of the square RGB images in pixels (objects scale with it; 48-128 works best).
        train_images, val_images, test_images: images per split (twins included).
        captions_per_image: captions per image (distinct strings).
        twin_fraction: probability that an original scene gets a compositional twin next to it in the
            same split (colours, shapes or positions of two objects swapped); twins are thus about
            ``f / (1 + f)`` of the images.
        min_objects, max_objects: objects per scene (1-4).
        vocab_size: WordPiece target size (the closed vocabulary stays far below it).
        vqa_per_image: questions per image; vqa_annotators: answers per question; vqa_noise: the chance
            that one annotator answers wrongly (the true answer always keeps a majority).
        nlvr_per_image: NLVR2-style statements per image of a split (pairs drawn within the split).
        ve_per_image: visual-entailment sentences per image (labels cycle, so 3 gives one of each).
        swaps_per_image: swap probes per val/test image with two or more objects (0-2: attribute, relation).
    """

    seed: int = 0
    image_size: int = 64
    train_images: int = 8000
    val_images: int = 300
    test_images: int = 300
    captions_per_image: int = 5
    twin_fraction: float = 0.5
    min_objects: int = 1
    max_objects: int = 4
    vocab_size: int = 512
    vqa_per_image: int = 3
    vqa_annotators: int = 5
    vqa_noise: float = 0.15
    nlvr_per_image: float = 1.0
    ve_per_image: int = 3
    swaps_per_image: int = 2

    def __post_init__(self) -> None:
        checks = {
            "seed": (0 <= self.seed <= 2**32 - 1, self.seed),
            "image_size": (32 <= self.image_size <= 512, self.image_size),
            "train_images": (self.train_images >= 2, self.train_images),
            "val_images": (self.val_images >= 2, self.val_images),
            "test_images": (self.test_images >= 2, self.test_images),
            "captions_per_image": (1 <= self.captions_per_image <= 12, self.captions_per_image),
            "twin_fraction": (0.0 <= self.twin_fraction <= 1.0, self.twin_fraction),
            "min_objects": (1 <= self.min_objects <= self.max_objects, self.min_objects),
            "max_objects": (1 <= self.max_objects <= 4, self.max_objects),
            "vocab_size": (self.vocab_size >= 100, self.vocab_size),
            "vqa_per_image": (0 <= self.vqa_per_image < 100, self.vqa_per_image),
            "vqa_annotators": (self.vqa_annotators >= 1, self.vqa_annotators),
            "vqa_noise": (0.0 <= self.vqa_noise < 0.5, self.vqa_noise),
            "nlvr_per_image": (self.nlvr_per_image >= 0, self.nlvr_per_image),
            "ve_per_image": (self.ve_per_image >= 0, self.ve_per_image),
            "swaps_per_image": (0 <= self.swaps_per_image <= 2, self.swaps_per_image),
        }
        for key, (ok, value) in checks.items():
            if not ok:
                raise ConfigError(f"invalid value {value!r} for {key}", key=key)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready mapping."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown keys {unknown}", key=unknown[0])
        return cls(**data)

    def digest(self) -> str:
        """Eight hex digits identifying the generated data (format version and settings)."""
        blob = json.dumps({"format_version": FORMAT_VERSION, "config": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]
