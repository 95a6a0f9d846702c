"""Image-text matching head: ``Linear(D, 2)`` on the fused representation (class 1 = match)."""

from __future__ import annotations

from torch import Tensor, nn

from vlkit.encoders.base import Encoder
from vlkit.registry import register


@register("head", "itm")
class ITMHead(nn.Module):
    """Match / no-match logits: ``[N, D]`` → ``[N, 2]`` (ALBEF ``itm_head``, VLMo ``itm_score.fc``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    @classmethod
    def build(cls, encoder: Encoder, cfg: object = None) -> ITMHead:
        return cls(encoder.width)

    def forward(self, fused_cls: Tensor) -> Tensor:
        return self.fc(fused_cls)
