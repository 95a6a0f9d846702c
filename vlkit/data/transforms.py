"""Image transforms: resize / augment, then normalize with the recipe's statistics."""

from __future__ import annotations

from typing import Literal

from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # ALBEF
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # VLMo / ViLT
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
Normalization = Literal["clip", "inception", "imagenet"]


def _to_tensor(normalization: Normalization) -> list:
    import torch

    mean, std = NORMALIZATION[normalization]
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def eval_transform(size: int, normalization: Normalization = "clip") -> T.Compose:
    """Resize to ``size × size`` (bicubic) and normalize: PIL image → ``[3, size, size]``."""
    return T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), *_to_tensor(normalization)])


def train_transform(size: int, normalization: Normalization = "clip", *, crop_scale: tuple[float, float] | None = None,
                    flip: bool = False) -> T.Compose:
    """Training transform: random resized crop (``crop_scale``; None: plain resize), optional
    horizontal flip (off by default: it turns 'left of' captions false), normalize."""
    steps: list = []
    if crop_scale is None:
        steps.append(T.Resize((size, size), interpolation=InterpolationMode.BICUBIC))
    else:
        steps.append(T.RandomResizedCrop(size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, *_to_tensor(normalization)])
