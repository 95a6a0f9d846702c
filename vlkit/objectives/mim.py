"""Masked image modelling by pixel regression (SimMIM / MAE style): hide a fixed share of each image's
patches behind a learned mask token, encode, and regress the hidden patches' pixels with a linear
decoder. VLMo's stage 1 uses BEiT's visual-token targets; BEiT's tokenizer cannot be fetched offline,
so vlkit's target is the pixels themselves (SimMIM: L1 on normalized pixels; ``norm_pix`` adds MAE's
per-patch normalization).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vlkit.core.encodings import PatchMask
from vlkit.core.errors import ConfigError
from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.ranges import check_number
from vlkit.core.step import StepView
from vlkit.nn.patch_mask import random_patch_positions
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.registry import register


@dataclass(kw_only=True)
class MIMConfig(ObjectiveConfig):
    """Masked image modelling.

    Attributes:
        mask_ratio: share of each image's patches hidden (BEiT: about 0.4; SimMIM 0.6; MAE 0.75).
        loss: ``l1`` (SimMIM) or ``mse`` (MAE) over the hidden patches' pixels.
        norm_pix: normalize each target patch by its own mean and std (MAE's ``norm_pix_loss``).
    """

    mask_ratio: float = 0.4
    loss: Literal["l1", "mse"] = "l1"
    norm_pix: bool = False

    modalities: ClassVar[frozenset[str]] = frozenset({"pair", "image"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("mask_ratio", self.mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        if self.loss not in ("l1", "mse"):
            raise ConfigError(f"is `{self.loss}`, not one of l1, mse", key="loss")


class MIMHead(nn.Module):
    """The mask token and a linear pixel decoder: ``[N, K, D]`` tokens → ``[N, K, p·p·3]`` pixels.

    Args:
        width: token width ``D``.
        patch_size: ``p``.
    """

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(width), std=0.02))
        self.decoder = nn.Linear(width, patch_size * patch_size * 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(tokens)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[B, 3, H, W]`` → ``[B, P, p·p·3]``, patches row-major (the patch embedding's token order)."""
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


@register("objective", "mim")
class MIM(Objective):
    """Pixel regression of randomly masked patches (the same count in every image: static shapes)."""

    Config = MIMConfig

    def __init__(self, cfg: MIMConfig, name: str = "mim", *, patch_size: int, patches: int, width: int) -> None:
        super().__init__(cfg, name)
        self.cfg: MIMConfig = cfg
        self.patch_size, self.patches = patch_size, patches
        self.masked = max(1, round(cfg.mask_ratio * self.patches))
        self.head = MIMHead(width, self.patch_size)

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> MIM:
        assert isinstance(cfg, MIMConfig)
        if not parts.encoder.supports_patch_mask:
            raise ConfigError(f"objective `{name}` (mim) hides image patches, which the "
                              f"`{type(parts.encoder).__name__}` cannot take; use an albef or mome encoder")
        patch_size, patches, width = parts.encoder.image_geometry()
        return cls(cfg, name, patch_size=patch_size, patches=patches, width=width)

    def forward(self, step: StepView) -> ObjectiveOutput:
        images = step.batch.images
        if images is None:
            raise RuntimeError("masked image modelling needs images; this batch has none")
        positions = random_patch_positions(images.shape[0], self.patches, self.masked, images.device)  # [B, K]
        encoding = step.masked_image(PatchMask(positions, self.head.mask_token))
        if encoding.embeds is None:
            raise RuntimeError("the encoder returned no image tokens (embeds) for the masked images")
        tokens = encoding.embeds[:, 1:]  # [B, P, D] without [CLS]
        width = tokens.shape[-1]
        hidden = tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, width))  # [B, K, D]
        predicted = self.head(hidden).float()  # [B, K, p·p·3]
        pixels = patchify(images, self.patch_size)
        target = pixels.gather(1, positions.unsqueeze(-1).expand(-1, -1, pixels.shape[-1])).float()
        if self.cfg.norm_pix:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        loss = F.l1_loss(predicted, target) if self.cfg.loss == "l1" else F.mse_loss(predicted, target)
        return ObjectiveOutput(loss=loss)
