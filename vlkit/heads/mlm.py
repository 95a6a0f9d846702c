"""BERT's masked-language-modelling head, HF layout (``predictions.*``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlkit.encoders.base import Encoder
from vlkit.heads.base import Head, HeadShape
from vlkit.registry import register
from vlkit.schema import ComponentConfig

log = logging.getLogger(__name__)


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

    def __init__(self, dim: int, vocab_size: int, eps: float, tied_weight: Tensor | None) -> None:
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
class MLMHead(Head):
    """Vocabulary logits for (masked) text positions: ``[N, D]`` → ``[N, V]``. The ``mlm`` objective builds
    it over its encoder (:meth:`build`: tied to the word embeddings, BERT's head weights when the text tower
    brought them); :meth:`from_shape` gives an untied head of ``HeadShape(D, V)``.

    Call it on the masked positions only: the loss and its gradients are the same as with the
    full ``[B, L, V]`` logits, at a fraction of the cost.
    """

    def __init__(self, dim: int, vocab_size: int, *, eps: float = 1e-12,
                 tied_weight: Tensor | None = None) -> None:
        super().__init__()
        self.predictions = MLMPredictions(dim, vocab_size, eps, tied_weight)

    @classmethod
    def from_shape(cls, shape: HeadShape) -> MLMHead:
        return cls(shape.in_dim, shape.out_dim)

    @classmethod
    def build(cls, encoder: Encoder, cfg: MLMHeadConfig | None = None) -> MLMHead:
        """An MLM head over ``encoder``'s fused width and vocabulary (tied unless configured not to)."""
        cfg = cfg or MLMHeadConfig()
        embeddings = encoder.word_embeddings()
        tied = embeddings.weight if cfg.tie_word_embeddings else None
        head = cls(encoder.width, embeddings.num_embeddings, tied_weight=tied)
        if (state := encoder.take_head_weights("mlm")) is not None:  # BERT's head, from encoder.text.init
            head.load_pretrained(state, embeddings.weight)
        return head

    @torch.no_grad()
    def load_pretrained(self, state: dict[str, Tensor], word_embeddings: Tensor) -> None:
        """Start from a pre-trained head (BERT's ``cls.predictions``, in this module's key layout): a
        decoder tied to ``word_embeddings`` stays tied; an untied one takes the checkpoint's decoder or,
        where the checkpoint tied it (BERT), a copy of the word embeddings."""
        state = dict(state)
        decoder = state.pop("predictions.decoder.weight", None)
        if self.predictions.decoder.weight is not word_embeddings:
            state["predictions.decoder.weight"] = word_embeddings.detach().clone() if decoder is None else decoder
        elif decoder is not None:
            log.warning("MLM head: the checkpoint's decoder is not its word embeddings; the tied decoder keeps the "
                        "word embeddings (set tie_word_embeddings: false to load it)")
        unexpected = self.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"pre-trained MLM head weights without a place in the head: {unexpected}")
        log.info("MLM head: %d tensors from the text tower's checkpoint", len(state))

    @property
    def vocab_size(self) -> int:
        return self.predictions.bias.shape[0]

    def forward(self, hidden: Tensor) -> Tensor:
        return self.predictions(hidden)
