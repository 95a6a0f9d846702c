"""BERT's masked-language-modelling head, HF layout (``predictions.*``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlkit.encoders.base import Encoder
from vlkit.registry import register
from vlkit.schema import ComponentConfig


@dataclass(kw_only=True)
class MLMHeadConfig(ComponentConfig):
    """MLM head settings.

    Attributes:
        tie_word_embeddings: share the decoder weight with the text word embeddings (BERT / ALBEF);
            VLMo's head is untied.
    """

    tie_word_embeddings: bool = True


class MLMTransform(nn.Module):
    """HF ``predictions.transform``: dense → GELU → LayerNorm, ``[.., D]`` → ``[.., D]``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class MLMPredictions(nn.Module):
    """HF ``predictions``: transform, ``decoder`` (no own bias) and ``bias``."""

    def __init__(self, dim: int, vocab_size: int, eps: float, tied_weight: nn.Parameter | None) -> None:
        super().__init__()
        self.transform = MLMTransform(dim, eps)
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        if tied_weight is not None:
            if tied_weight.shape != self.decoder.weight.shape:
                raise ValueError(f"tied weight {tuple(tied_weight.shape)} does not fit a {dim}→{vocab_size} decoder")
            self.decoder.weight = tied_weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias


@register("head", "mlm", config=MLMHeadConfig)
class MLMHead(nn.Module):
    """Vocabulary logits for (masked) text positions: ``[N, D]`` → ``[N, V]``.

    Call it on the masked positions only: the loss and its gradients are the same as with the
    full ``[B, L, V]`` logits, at a fraction of the cost.
    """

    def __init__(self, dim: int, vocab_size: int, *, eps: float = 1e-12,
                 tied_weight: nn.Parameter | None = None) -> None:
        super().__init__()
        self.predictions = MLMPredictions(dim, vocab_size, eps, tied_weight)

    @classmethod
    def build(cls, encoder: Encoder, cfg: MLMHeadConfig | None = None) -> MLMHead:
        """An MLM head over ``encoder``'s fused width and vocabulary (tied unless configured not to)."""
        cfg = cfg or MLMHeadConfig()
        embeddings = encoder.word_embeddings()
        tied = embeddings.weight if cfg.tie_word_embeddings else None
        return cls(encoder.width, embeddings.num_embeddings, tied_weight=tied)

    @property
    def vocab_size(self) -> int:
        return self.predictions.bias.shape[0]

    def forward(self, hidden: Tensor) -> Tensor:
        return self.predictions(hidden)
