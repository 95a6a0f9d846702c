"""Phrase-patch alignment: each annotated phrase picks out the image patches its box covers.

GLIP (Li et al., 2022) and MDETR (Kamath et al., 2021) align words with image regions contrastively.
Here, on the towers' own outputs (before any fusion): a phrase's embedding is the mean of its caption
tokens after the text layers, projected to ``dim``; each image patch token is projected likewise; a
phrase's logits against *every* patch of the batch (all images, ``[P, B·N]``, cosine / temperature)
are trained with cross-entropy towards a uniform distribution over its positive patches — the patches
of its own image that its box covers (cell centre inside the box, and always the cell holding the box
centre). Negatives include the same object kind in other images' layouts and every other object of
the batch, so the image tower must tell which colour *and shape* each patch shows: the dense,
language-given supervision that contrastive and MLM signals from scratch do not provide (see the
research/README.md). Not an ALBEF or VLMo objective. The temperature is learnable
(init ``temperature``, clamped to [0.001, 0.5] after each step like ITC's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.loader import LoaderRequest, PhraseRegionsRequest
from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.ranges import check_count, check_number
from vlkit.core.step import StepView
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.grounding import pool_phrases, step_regions
from vlkit.registry import register


@dataclass(kw_only=True)
class PhrasePatchConfig(ObjectiveConfig):
    """Phrase-patch alignment.

    Attributes:
        dim: width of the shared projection space.
        temperature: initial softmax temperature (learnable).
    """

    dim: int = 64
    temperature: float = 0.07

    reads_boxes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("dim", self.dim)
        check_number("temperature", self.temperature, 0, low_open=True)

    def loader_requests(self) -> tuple[LoaderRequest, ...]:
        return (PhraseRegionsRequest(),)


def covered_patches(boxes: Tensor, grid: int) -> Tensor:
    """``[P, 4]`` boxes ``(cx, cy, w, h)`` (fractions of the image side) → ``[P, grid·grid]`` bool, row-major
    cells whose centre lies inside the box, plus the cell that holds the box centre."""
    centres = (torch.arange(grid, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid
    cx, cy, w, h = boxes.unbind(1)
    inside_x = (centres[None] - cx[:, None]).abs() <= w[:, None] / 2  # [P, G]
    inside_y = (centres[None] - cy[:, None]).abs() <= h[:, None] / 2
    cells = inside_y[:, :, None] & inside_x[:, None, :]  # [P, G(y), G(x)]
    col = (cx * grid).long().clamp(0, grid - 1)
    row = (cy * grid).long().clamp(0, grid - 1)
    cells[torch.arange(len(boxes), device=boxes.device), row, col] = True
    return cells.flatten(1)


@register("objective", "phrase_patch")
class PhrasePatch(Objective):
    """Contrastive alignment of annotated phrases with the patches of their boxes."""

    Config = PhrasePatchConfig

    def __init__(self, cfg: PhrasePatchConfig, name: str = "phrase_patch", *, text_width: int, patch_width: int,
                 patches: int) -> None:
        super().__init__(cfg, name)
        self.cfg: PhrasePatchConfig = cfg
        self.grid = math.isqrt(patches)
        if self.grid * self.grid != patches:
            raise ValueError(f"phrase_patch needs a square patch grid, the encoder has {patches} patches")
        self.text_proj = nn.Linear(text_width, cfg.dim)
        self.patch_proj = nn.Linear(patch_width, cfg.dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature)))

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> PhrasePatch:
        assert isinstance(cfg, PhrasePatchConfig)
        try:
            _, patches, image_width = parts.encoder.image_geometry()
        except NotImplementedError:  # the base class's answer: the encoder does not expose its patches
            raise ConfigError(f"objective `{name}` (phrase_patch) aligns phrases with image patches, which the "
                              f"`{type(parts.encoder).__name__}` does not expose; use an albef or mome "
                              "encoder") from None
        return cls(cfg, name, text_width=parts.encoder.width, patch_width=image_width, patches=patches)

    def forward(self, step: StepView) -> ObjectiveOutput:
        regions = step_regions(step)
        if regions.rows.numel() == 0:
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            assert isinstance(zero, Tensor)  # a sum of tensors (the objective has parameters)
            return ObjectiveOutput(loss=zero, metrics={})
        text_embeds = step.text.embeds
        if text_embeds is None:
            raise RuntimeError("phrase_patch needs the text tokens (text.embeds)")
        phrases = F.normalize(self.text_proj(pool_phrases(text_embeds, regions, "mean")).float(), dim=-1)
        image_embeds = step.image.embeds
        if image_embeds is None:
            raise RuntimeError("phrase_patch needs the image tokens (image.embeds)")
        patches = image_embeds[:, 1:]  # [B, N, D] without [CLS]
        b, n = patches.shape[:2]
        patches = F.normalize(self.patch_proj(patches).float(), dim=-1).flatten(0, 1)  # [B·N, E]
        logits = self.log_scale.exp() * phrases @ patches.T  # [P, B·N]
        positive = torch.zeros(len(phrases), b, n, dtype=torch.bool, device=logits.device)
        rows = torch.arange(len(phrases), device=logits.device)
        positive[rows, regions.rows] = covered_patches(regions.boxes, self.grid)
        target = positive.flatten(1).float()
        target = target / target.sum(1, keepdim=True)
        loss = -(target * logits.log_softmax(1)).sum(1).mean()
        with torch.no_grad():
            hit = positive.flatten(1).gather(1, logits.argmax(1, keepdim=True)).float().mean()
        temperature = 1 / self.log_scale.exp().detach()
        return ObjectiveOutput(loss=loss, metrics={"top1_in_box": hit, "temperature": temperature})

    def after_step(self, step: StepView) -> None:
        with torch.no_grad():
            self.log_scale.clamp_(math.log(2.0), math.log(1000.0))
