"""Classifier heads on fused [CLS] features (VE, NLVR2, VQA as classification)."""

from __future__ import annotations

from torch import Tensor, nn

from vlkit.heads.base import Head, HeadShape
from vlkit.registry import register


@register("head", "classifier")
class ClassifierHead(Head):
    """ALBEF's ``cls_head``: ``Linear(D_in, D) → ReLU → Linear(D, C)``; ``[N, D_in]`` → ``[N, C]``."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    @classmethod
    def from_shape(cls, shape: HeadShape) -> ClassifierHead:
        return cls(shape.in_dim, shape.hidden_dim, shape.out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


@register("head", "classifier_vlmo")
class VLMoClassifierHead(Head):
    """VLMo's VQA / NLVR2 head: ``Linear(D_in, 2D) → LayerNorm → GELU → Linear(2D, C)``;
    ``[N, D_in]`` → ``[N, C]`` (``hidden`` = D)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(),
                                 nn.Linear(2 * hidden, num_classes))

    @classmethod
    def from_shape(cls, shape: HeadShape) -> VLMoClassifierHead:
        return cls(shape.in_dim, shape.hidden_dim, shape.out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
