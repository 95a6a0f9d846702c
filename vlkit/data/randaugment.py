"""ALBEF's RandAugment: ``N`` operations drawn with replacement from ten, each applied with
probability 0.5 at magnitude ``M`` of 10 (ALBEF and VLMo use N=2, M=7).

The ten operations and their magnitudes follow ALBEF's ``RandomAugment`` (``dataset/randaugment.py``),
re-implemented on PIL images:

==============  ==========================================================================
Identity        —
AutoContrast    per channel, darkest value → 0, brightest → 255
Equalize        per-channel histogram equalization
Brightness      blend with black, factor ``M/10 · 1.8 + 0.1`` (1.36 at M=7; no random sign)
Sharpness       blend with the 3×3 smoothed image, same factor
ShearX / ShearY ``±M/10 · 0.3`` (±0.21), about the top-left corner, random sign
TranslateX / Y  ``±M/10 · 10`` pixels (±7), random sign
Rotate          ``±M/10 · 30`` degrees (±21) about the centre, random sign
==============  ==========================================================================

Geometric operations interpolate bilinearly and fill uncovered pixels with grey ``(128, 128, 128)``.
No colour, contrast, solarize or posterize operations (ALBEF leaves them out: they would make colour
words in captions false).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10
FILL = (128, 128, 128)
ALBEF_OPS: tuple[str, ...] = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                              "TranslateX", "TranslateY", "Rotate")


def enhance_factor(level: float) -> float:
    """Brightness / sharpness factor at ``level`` (ALBEF: ``level/10 · 1.8 + 0.1``)."""
    return level / MAX_LEVEL * 1.8 + 0.1


def _affine(image: Image.Image, inverse: tuple[float, float, float, float, float, float]) -> Image.Image:
    """Affine warp; ``inverse`` maps output pixel ``(x, y)`` to the input ``(a·x + b·y + c, d·x + e·y + f)``."""
    return image.transform(image.size, Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR,
                           fillcolor=FILL)


def shear_x(image: Image.Image, factor: float) -> Image.Image:
    """``x' = x + factor · y``."""
    return _affine(image, (1.0, -factor, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: Image.Image, factor: float) -> Image.Image:
    """``y' = y + factor · x``."""
    return _affine(image, (1.0, 0.0, 0.0, -factor, 1.0, 0.0))


def translate_x(image: Image.Image, pixels: float) -> Image.Image:
    """Content moves ``pixels`` to the left (ALBEF's sign convention; the sign is random anyway)."""
    return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: Image.Image, pixels: float) -> Image.Image:
    """Content moves ``pixels`` up."""
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Counter-clockwise rotation about the centre, same canvas."""
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=FILL)


def apply_op(image: Image.Image, name: str, level: float, rng: np.random.Generator) -> Image.Image:
    """One operation of :data:`ALBEF_OPS` at ``level`` (signed operations draw their sign from ``rng``)."""
    sign = -1.0 if rng.random() > 0.5 else 1.0
    fraction = level / MAX_LEVEL
    ops: dict[str, Callable[[], Image.Image]] = {
        "Identity": lambda: image,
        "AutoContrast": lambda: ImageOps.autocontrast(image),
        "Equalize": lambda: ImageOps.equalize(image),
        "Brightness": lambda: ImageEnhance.Brightness(image).enhance(enhance_factor(level)),
        "Sharpness": lambda: ImageEnhance.Sharpness(image).enhance(enhance_factor(level)),
        "ShearX": lambda: shear_x(image, sign * fraction * 0.3),
        "ShearY": lambda: shear_y(image, sign * fraction * 0.3),
        "TranslateX": lambda: translate_x(image, sign * fraction * 10.0),
        "TranslateY": lambda: translate_y(image, sign * fraction * 10.0),
        "Rotate": lambda: rotate(image, sign * fraction * 30.0),
    }
    if name not in ops:
        raise ValueError(f"unknown RandAugment operation `{name}`; choose from {', '.join(ALBEF_OPS)}")
    return ops[name]()


class RandomAugment:
    """ALBEF's RandAugment as a PIL → PIL transform.

    Args:
        num_ops: operations drawn per image, with replacement (ALBEF: 2).
        magnitude: level in ``0..10`` (ALBEF: 7).
        ops: operation names (default: ALBEF's ten).
        p: probability that each drawn operation is applied (ALBEF: 0.5).

    Randomness comes from the torch generator (seed it per sample, as :class:`~vlkit.data.json_dataset.PairDataset`
    does), so a sample is augmented the same way in any worker and after a resume.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 7, ops: tuple[str, ...] = ALBEF_OPS,
                 p: float = 0.5) -> None:
        unknown = [o for o in ops if o not in ALBEF_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment operations {unknown}; choose from {', '.join(ALBEF_OPS)}")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"magnitude must be in [0, {MAX_LEVEL}], got {magnitude}")
        self.num_ops, self.magnitude, self.ops, self.p = num_ops, magnitude, tuple(ops), p

    def __call__(self, image: Image.Image) -> Image.Image:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = np.random.default_rng(seed)
        for k in rng.choice(len(self.ops), size=self.num_ops, replace=True):
            if rng.random() < self.p:
                image = apply_op(image, self.ops[int(k)], self.magnitude, rng)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, p={self.p})"
