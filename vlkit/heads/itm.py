"""Image-text matching head: ``Linear(D, 2)`` on the fused representation (class 1 = match)."""

from __future__ import annotations

from torch import Tensor, nn

from vlkit.heads.base import Head, HeadShape
from vlkit.registry import register


@register("head", "itm")
class ITMHead(Head):
    """Match / no-match logits: ``[N, D]`` → ``[N, 2]`` (ALBEF ``itm_head``, VLMo ``itm_score.fc``)."""

    def __init__(self, dim: int, outputs: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, outputs)

    @classmethod
    def from_shape(cls, shape: HeadShape) -> ITMHead:
        return cls(shape.in_dim, shape.out_dim)

    def forward(self, fused_cls: Tensor) -> Tensor:
        return self.fc(fused_cls)
