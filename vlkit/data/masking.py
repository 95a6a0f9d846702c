"""Masked-language-model corruption of token batches (BERT / ALBEF rules), done on the CPU in the
data loader so the training step gets the masked positions as a ready index (no device sync).

Rule: each eligible token (not a special token, not padding) is selected with probability
``mask_prob``; a selected token becomes ``[MASK]`` with probability ``mask_token_prob``, a random
vocabulary id with probability ``random_token_prob``, and is left unchanged otherwise (80/10/10).
With ``whole_word``, the decision is made per word and applies to all its WordPieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlkit.core.batch import MaskedTokens
from vlkit.core.loader import MaskingConfig


@dataclass(frozen=True)
class TokenMasker:
    """Applies :class:`MaskingConfig` to token batches; picklable, for data-loader workers.

    Attributes:
        cfg: the rates.
        mask_id: id of ``[MASK]``.
        vocab_size: random replacements are drawn from ``[0, vocab_size)`` (the whole vocabulary, as ALBEF).
        special_ids: ids never selected (``[PAD]``, ``[CLS]``, ``[SEP]``, ...).
    """

    cfg: MaskingConfig
    mask_id: int
    vocab_size: int
    special_ids: frozenset[int]

    def apply_to(self, batch: Any, text: Any, rng: np.random.Generator) -> None:
        """Batch-transform protocol of the collate function: set ``batch.mlm``."""
        batch.mlm = self(batch.input_ids, batch.attention_mask, rng, text.word_ids if self.cfg.whole_word else None)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, rng: np.random.Generator,
                 word_ids: list[list[int | None]] | None = None) -> MaskedTokens:
        """Mask ``input_ids`` ``[B, L]`` (``attention_mask`` ``[B, L]``); ``word_ids`` (per row, the word
        index of each token or None) is needed for whole-word masking."""
        ids = input_ids.numpy()
        eligible = attention_mask.numpy().astype(bool) & ~np.isin(ids, list(self.special_ids))
        if self.cfg.whole_word:
            if word_ids is None:
                raise ValueError("whole-word masking needs the tokenizer's word_ids per row")
            selected = self._select_words(eligible, word_ids, rng)
        else:
            selected = eligible & (rng.random(ids.shape) < self.cfg.mask_prob)
        if not selected.any() and eligible.any():  # a loss needs at least one target per batch
            candidates = np.flatnonzero(eligible)
            selected.flat[candidates[rng.integers(len(candidates))]] = True
        draw = rng.random(ids.shape)
        to_mask = selected & (draw < self.cfg.mask_token_prob)
        keep_from = self.cfg.mask_token_prob + self.cfg.random_token_prob
        to_random = selected & (draw >= self.cfg.mask_token_prob) & (draw < keep_from)
        corrupted = ids.copy()
        corrupted[to_mask] = self.mask_id
        corrupted[to_random] = rng.integers(0, self.vocab_size, size=int(to_random.sum()))
        positions = np.flatnonzero(selected)
        return MaskedTokens(
            input_ids=torch.from_numpy(corrupted),
            positions=torch.from_numpy(positions),
            labels=torch.from_numpy(ids.reshape(-1)[positions].copy()),
        )

    def _select_words(self, eligible: np.ndarray, word_ids: list[list[int | None]],
                      rng: np.random.Generator) -> np.ndarray:
        selected = np.zeros_like(eligible)
        for row, words in enumerate(word_ids):
            chosen: dict[int, bool] = {}
            for col, word in enumerate(words[: eligible.shape[1]]):
                if word is None or not eligible[row, col]:
                    continue
                if word not in chosen:
                    chosen[word] = bool(rng.random() < self.cfg.mask_prob)
                selected[row, col] = chosen[word]
        return selected
