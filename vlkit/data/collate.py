"""Collation for pre-training: stack images, tokenize captions, apply the objectives' batch
transforms (e.g. MLM masking) — all in data-loader workers, on the CPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from vlkit.core.batch import HARD_NEGATIVES, Batch, HardNegativeText
from vlkit.core.errors import DataError
from vlkit.data.json_dataset import Sample
from vlkit.data.safe_io import unicode_problem
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import Padding, TokenizedText, tokenize

log = logging.getLogger("vlkit.data")

PHRASES = "phrases"
"""``Batch.extras`` key: per row, the caption's grounded phrases (:class:`~vlkit.data.phrases.PhraseBox`)."""
PHRASES_VOIDED = "phrases_voided"
"""``Batch.extras`` key: phrases dropped because caption cleaning changed their caption's characters."""
_NEGATIVE_DRAWS = 7  # seeds the hard-negative draws apart from the batch transforms' stream


_unusable_logged = 0


def unusable_text(text: str, key: int) -> bool:
    """Whether ``text`` cannot reach the tokenizer (not valid Unicode: a lone surrogate); logs the first
    few per process. Sources skip such texts when they read them; this is the last guard before
    tokenizing, so that one bad caption costs its sample and never the batch."""
    global _unusable_logged
    problem = unicode_problem(text)
    if problem is None:
        return False
    _unusable_logged += 1
    if _unusable_logged <= 5:
        log.warning("sample %d skipped: its text is %s", key, problem)
    return True


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """``B × [3, H, W]`` → ``[B, 3, H, W]``; in a loader worker, stacked straight into shared memory
    (``default_collate`` does), which saves the copy the worker → main-process hand-over would make."""
    return torch.utils.data.default_collate(images)


class BatchTransform(Protocol):
    """Something an objective asks the loader to do to each batch (must be picklable)."""

    def apply_to(self, batch: Batch, text: TokenizedText, rng: np.random.Generator) -> None: ...


@dataclass
class PretrainCollate:
    """``list[Sample | None]`` → :class:`Batch`; ``None`` samples (unreadable images) and samples whose
    caption or hard negatives are not valid Unicode are dropped and counted in ``Batch.skipped``.

    Attributes:
        tokenizer: a fast BERT tokenizer.
        max_length: token limit per caption.
        drop_sep: remove the trailing [SEP] (ALBEF).
        transforms: batch transforms, applied in order.
        seed: run seed; each batch's randomness is drawn from ``(seed, sample keys)``.
        clean: caption cleaning before tokenization (ALBEF's ``pre_caption`` when enabled).
        padding: text batch width rule (see :func:`vlkit.data.tokenizer.padded_length`).
        hard_negatives: draw one of each caption's annotated negatives (``Sample.hard_negatives``) and
            tokenize it into ``Batch.extras["hard_negatives"]`` (:class:`HardNegativeText`; absent when no
            sample has one); set when an objective reads them (``itm`` with ``hard_negatives``).
    """

    tokenizer: Any
    max_length: int
    drop_sep: bool = False
    transforms: list[BatchTransform] = field(default_factory=list)
    seed: int = 0
    clean: CaptionCleaner = field(default_factory=CaptionCleaner)
    padding: Padding = "longest"
    hard_negatives: bool = False

    def tokenize_texts(self, texts: list[str]) -> TokenizedText:
        """Clean (``pre_caption`` if on) and tokenize ``texts`` with the collate's length and padding rules."""
        return tokenize(self.tokenizer, [self.clean(t) for t in texts], self.max_length, drop_sep=self.drop_sep,
                        padding=self.padding)

    def transform(self, batch: Batch, text: TokenizedText, keys: list[int]) -> Batch:
        """Apply the batch transforms with randomness drawn from ``(seed, keys)``."""
        rng = np.random.default_rng([self.seed, *keys])
        for transform in self.transforms:
            transform.apply_to(batch, text, rng)
        return batch

    def __call__(self, samples: list[Sample | None]) -> Batch:
        kept = [s for s in samples if s is not None and not unusable_text(" ".join((s.caption, *s.hard_negatives)),
                                                                           s.key)]
        if not kept:
            raise DataError(f"no sample of a batch of {len(samples)} could be used (each is named with its reason in "
                            "bad_samples.jsonl); fix the data or filter it (vlkit data filter)")
        text = self.tokenize_texts([s.caption for s in kept])
        batch = Batch(images=stack_images([s.image for s in kept]), input_ids=text.input_ids,
                      attention_mask=text.attention_mask, idx=torch.tensor([s.idx for s in kept]),
                      skipped=len(samples) - len(kept), text_lengths=Batch.lengths_of(text.attention_mask))
        if any(s.phrases for s in kept):  # spans index the caption as written: cleaning that changes it voids them
            intact = [self.clean(s.caption) == s.caption for s in kept]
            batch.extras[PHRASES] = [s.phrases if ok else () for s, ok in zip(kept, intact, strict=True)]
            batch.extras[PHRASES_VOIDED] = sum(len(s.phrases) for s, ok in zip(kept, intact, strict=True) if not ok)
        if self.hard_negatives and any(s.hard_negatives for s in kept):
            batch.extras[HARD_NEGATIVES] = self.negative_text(kept)
        return self.transform(batch, text, [s.key for s in kept])

    def negative_text(self, samples: list[Sample]) -> HardNegativeText:
        """One annotated negative per sample, drawn from ``(seed, keys)``; an empty caption marked invalid
        where a sample has none."""
        rng = np.random.default_rng([self.seed, *(s.key for s in samples), _NEGATIVE_DRAWS])
        picks = [s.hard_negatives[int(rng.integers(len(s.hard_negatives)))] if s.hard_negatives else ""
                 for s in samples]
        text = self.tokenize_texts(picks)
        valid = [float(bool(s.hard_negatives)) for s in samples]
        return HardNegativeText(text.input_ids, text.attention_mask, torch.tensor(valid),
                                Batch.lengths_of(text.attention_mask), int(sum(valid)))
