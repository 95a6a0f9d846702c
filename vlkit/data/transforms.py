"""Image transforms: resize / augment, then normalize with the recipe's statistics.

- :func:`train_transform`: ALBEF pre-training is ``RandomResizedCrop(256, scale=(0.2, 1), bicubic)`` →
  horizontal flip → :class:`~vlkit.data.randaugment.RandomAugment` (2 ops, magnitude 7) → normalize
  (CLIP statistics); fine-tuning the same with ``scale=(0.5, 1)``; VLMo ``scale=(0.5, 1)`` with
  inception statistics. Every step is a recipe option (``data.crop_scale``, ``data.flip``,
  ``data.randaugment``, ``data.normalize``).
- :func:`eval_transform`: bicubic resize to the square input size, normalize.
- :func:`decode_size`: how small a JPEG may be decoded (``Image.draft``) without losing pixels the
  transform would keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

from vlkit.core.batch import Batch
from vlkit.data.randaugment import ALBEF_OPS, RandomAugment

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # ALBEF
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # VLMo / ViLT
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
Normalization = Literal["clip", "inception", "imagenet"]


class NormalizeUint8(torch.nn.Module):
    """uint8 ``[..., 3, H, W]`` → float32 ``(x / 255 − mean) / std``, computed as one scale and one shift
    per channel (``x · 1/(255·std) − mean/std``: two in-place passes instead of torchvision's
    ``ToDtype`` + ``Normalize`` allocations; equal to them within float32 rounding)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, normalization: Normalization) -> None:
        super().__init__()
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in NORMALIZATION[normalization])
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(3, 1, 1), persistent=False)
        self.register_buffer("shift", (mean / std).view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale.to(images.device), self.shift.to(images.device)
        return images.to(torch.float32, copy=True).mul_(scale).sub_(shift)


def _to_tensor(normalization: Normalization | None) -> list:
    """PIL → float ``[3, H, W]`` normalized, or (``None``) uint8 ``[3, H, W]`` left for the GPU."""
    if normalization is None:
        return [T.ToImage()]
    return [T.ToImage(), NormalizeUint8(normalization)]


def normalize_on_device(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` (e.g. just copied to the GPU) → normalized float32 ``[B, 3, H, W]``."""
    return NormalizeUint8(normalization)(images)


@dataclass(frozen=True)
class DeviceNormalize:
    """The training step's half of ``data.normalize_on_device``: a batch whose images arrived as uint8
    ``[B, 3, H, W]`` leaves with float32 normalized images (on the batch's device)."""

    normalization: Normalization

    def __call__(self, batch: Batch) -> Batch:
        if batch.images is not None and batch.images.dtype == torch.uint8:
            batch.images = normalize_on_device(batch.images, self.normalization)
        return batch


def eval_transform(size: int, normalization: Normalization | None = "clip") -> T.Compose:
    """Resize to ``size × size`` (bicubic) and normalize: PIL image → ``[3, size, size]``."""
    return T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), *_to_tensor(normalization)])


def train_transform(size: int, normalization: Normalization | None = "clip", *,
                    crop_scale: tuple[float, float] | None = None, flip: bool = False,
                    randaugment: tuple[int, float] | None = None,
                    randaugment_ops: tuple[str, ...] = ALBEF_OPS) -> T.Compose:
    """Training transform: PIL image → ``[3, size, size]``.

    Args:
        size: output side.
        normalization: statistics, or None to return uint8 (normalize later with :func:`normalize_on_device`).
        crop_scale: random-resized-crop area range (bicubic); None: plain bicubic resize.
        flip: random horizontal flips (they turn "left of" captions false; ALBEF uses them anyway).
        randaugment: ``(num_ops, magnitude)`` of ALBEF's RandAugment (ALBEF: ``(2, 7)``); None: off.
        randaugment_ops: its operation set (default ALBEF's ten).
    """
    steps: list = []
    if crop_scale is None:
        steps.append(T.Resize((size, size), interpolation=InterpolationMode.BICUBIC))
    else:
        steps.append(T.RandomResizedCrop(size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if randaugment is not None:
        steps.append(RandomAugment(randaugment[0], randaugment[1], ops=randaugment_ops))
    return T.Compose([*steps, *_to_tensor(normalization)])


def decode_size(size: int, crop_scale: tuple[float, float] | None = None) -> int:
    """The smallest short side that still gives the transform full resolution: ``size`` for a resize;
    for a random-resized crop, ``size / sqrt(min_scale · 3/4)`` (its narrowest crop, area ``min_scale``
    at aspect 3/4, spans ``sqrt(min_scale · 3/4)`` of a square image's side). ``Image.draft`` decodes
    JPEGs at 1/2, 1/4 or 1/8 scale only while both sides stay at least this large, so drafting to it
    loses nothing the crop would resolve (ALBEF at 256 px, scale 0.2: 661 px)."""
    if crop_scale is None:
        return size
    return math.ceil(size / math.sqrt(crop_scale[0] * 0.75))
