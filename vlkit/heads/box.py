"""Box regression head (X-VLM's ``bbox_head``): a fused phrase representation → its box."""

from __future__ import annotations

from torch import Tensor, nn

from vlkit.heads.base import Head, HeadShape
from vlkit.registry import register


@register("head", "box")
class BoxHead(Head):
    """``[N, D]`` → ``[N, 4]`` box ``(cx, cy, w, h)`` as fractions of the image side (sigmoid):
    ``Linear(D, 2D)`` → LayerNorm → GELU → ``Linear(2D, 4)``."""

    def __init__(self, dim: int, outputs: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, outputs))

    @classmethod
    def from_shape(cls, shape: HeadShape) -> BoxHead:
        return cls(shape.in_dim, shape.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).sigmoid()
