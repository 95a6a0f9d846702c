"""Synthetic training batches for benchmarks, made on the training device (no data loading).

Images are random ``uint8`` pixels normalized on the device; captions have random token ids with
lengths drawn from :data:`CAPTION_TOKENS`, padded by the recipe's ``data.padding`` rule; the MLM
objective's masker (and any other batch transform of the model) runs on them as in the loader.

Annotations the objectives read have stand-ins of the same shapes and costs (:data:`STAND_INS`):
hard-negative captions (:func:`rolled_negatives`) and phrase boxes (:func:`stand_in_phrases`). An
annotation field without a stand-in is named by :func:`omitted_work` — the timed step then leaves that
objective's work out, and the benchmark says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vlkit.core.batch import HARD_NEGATIVES, PHRASE_REGIONS, Batch, HardNegativeText, PhraseRegions
from vlkit.core.loader import LoaderRequest, PhraseRegionsRequest
from vlkit.data.loader_requests import batch_transforms, wants_hard_negatives
from vlkit.data.tokenizer import Padding, TokenizedText, padded_length
from vlkit.data.tokens import TextTokens
from vlkit.data.transforms import DeviceNormalize

CAPTION_TOKENS: dict[int, float] = {
    8: 0.01, 9: 0.03, 10: 0.07, 11: 0.12, 12: 0.15, 13: 0.15, 14: 0.13, 15: 0.10, 16: 0.08, 17: 0.06,
    18: 0.04, 19: 0.025, 20: 0.015, 22: 0.01, 25: 0.005,
}
"""Tokens per caption, ``[CLS]`` included, and their share: an approximation of COCO captions under the
bert-base-uncased tokenizer (mean ≈ 13.9 tokens) [est]. Longer recipes' limits clip nothing here; a
shorter ``data.max_text_len`` truncates."""

def text_tokens(vocab_size: int) -> TextTokens:
    """BERT's special ids with the encoder's vocabulary size."""
    return TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=vocab_size)


def caption_lengths(n: int, max_len: int, rng: np.random.Generator, fixed: int | None = None) -> np.ndarray:
    """``[n]`` token counts: ``fixed`` for every caption, else drawn from :data:`CAPTION_TOKENS`."""
    if fixed is not None:
        return np.full(n, min(fixed, max_len))
    lengths, shares = zip(*CAPTION_TOKENS.items(), strict=True)
    p = np.asarray(shares) / sum(shares)
    return np.minimum(rng.choice(lengths, size=n, p=p), max_len)


def rolled_negatives(batch: Batch) -> HardNegativeText:
    """Stand-ins for annotated hard-negative captions: each row gets the next row's caption (same
    lengths and costs as real ones)."""
    if batch.input_ids is None or batch.attention_mask is None:
        raise ValueError("rolled hard negatives need a batch with text")
    ids, mask = batch.input_ids.roll(1, 0), batch.attention_mask.roll(1, 0)
    return HardNegativeText(ids, mask, torch.ones(batch.size), Batch.lengths_of(mask), batch.size)


PHRASES_PER_CAPTION = 2
"""Stand-in phrases per caption (the synthetic world's captions ground one to three objects) [est]."""
PHRASE_TOKENS = 2
"""Tokens per stand-in phrase ("red circle")."""

STAND_INS: dict[str, str] = {
    HARD_NEGATIVES: "each row's annotated hard-negative caption is the next row's caption (rolled_negatives)",
    "phrases": f"{PHRASES_PER_CAPTION} phrases of {PHRASE_TOKENS} tokens per caption with random boxes "
               "(stand_in_phrases)",
}
"""Annotation field → what the benchmark batches carry in its place."""


def stand_in_phrases(lengths: np.ndarray, width: int, rng: np.random.Generator) -> PhraseRegions:
    """Stand-ins for annotated phrase boxes: :data:`PHRASES_PER_CAPTION` phrases per caption, each a span of
    up to :data:`PHRASE_TOKENS` tokens after ``[CLS]`` with a random box ``(cx, cy, w, h)`` inside the image
    (the same tensors, shapes and costs as real ones)."""
    rows, spans = [], []
    for row, length in enumerate(lengths.tolist()):
        for _ in range(PHRASES_PER_CAPTION):
            span = min(PHRASE_TOKENS, max(1, length - 1))
            start = int(rng.integers(1, max(2, length - span + 1)))
            rows.append(row)
            spans.append((start, start + span))
    tokens = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (start, stop) in enumerate(spans):
        tokens[i, start:stop] = True
    size = rng.uniform(0.1, 0.5, (len(rows), 2))
    centre = rng.uniform(size / 2, 1 - size / 2)
    boxes = torch.as_tensor(np.concatenate([centre, size], 1), dtype=torch.float32)
    return PhraseRegions(torch.tensor(rows, dtype=torch.long), tokens, boxes)


def omitted_work(objectives: dict[str, Any]) -> list[str]:
    """What the benchmark's step leaves out: one line per objective annotation field (``ObjectiveConfig
    .annotations``) that the synthetic batches have no stand-in for."""
    return [f"objectives.{name} ({cfg.type}) reads `{field}` annotations, which the synthetic batches do not carry: "
            "the timed step does none of its work on them"
            for name, cfg in objectives.items() for field in sorted(cfg.annotations) if field not in STAND_INS]


def stand_ins(objectives: dict[str, Any]) -> dict[str, str]:
    """The stand-ins the benchmark batches carry for these objectives' annotation fields."""
    fields = {field for cfg in objectives.values() for field in cfg.annotations}
    return {field: STAND_INS[field] for field in sorted(fields) if field in STAND_INS}


def synthetic_batches(recipe: Any, requests: list[LoaderRequest], batch_size: int, device: torch.device, *,
                      vocab_size: int, seed: int = 0, text_len: int | None = None) -> Iterator[Batch]:
    """Endless batches for ``recipe`` (images at the encoder's size, the data section's text rules).

    Args:
        requests: what the model's objectives ask of the loader (e.g. MLM masking), carried out as in training.
        vocab_size: the encoder's vocabulary (token ids are drawn below it, above the special ids).
        text_len: every caption this many tokens (None: the histogram).
    """
    data = recipe.data
    size = recipe.encoder.input_size
    max_len = data.max_text_len if data is not None else 30
    padding: Padding = data.padding if data is not None else "longest"
    if recipe.train.compile and padding == "longest":  # as training pads for compiled blocks
        padding = "multiple_of_8"
    normalize = DeviceNormalize(data.normalize if data is not None else "imagenet")
    transforms = batch_transforms(requests, text_tokens(vocab_size))
    hard_negatives = wants_hard_negatives(requests)
    phrases = any(isinstance(r, PhraseRegionsRequest) for r in requests)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    step = 0
    while True:
        lengths = caption_lengths(batch_size, max_len, rng, text_len)
        width = padded_length(int(lengths.max()), max_len, padding)
        ids = torch.randint(1000 if vocab_size > 2000 else 104, vocab_size, (batch_size, width), generator=generator)
        mask = torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
        ids = torch.where(mask, ids, torch.zeros_like(ids))
        ids[:, 0] = text_tokens(vocab_size).cls_id
        word_ids = [[None] + [j for j in range(1, n)] + [None] * (width - n) for n in lengths.tolist()]
        text = TokenizedText(ids, mask.long(), word_ids)
        images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
        batch = Batch(images, text.input_ids, text.attention_mask,
                      torch.arange(step * batch_size, (step + 1) * batch_size),
                      text_lengths=tuple(lengths.tolist()))
        if hard_negatives:
            batch.extras[HARD_NEGATIVES] = rolled_negatives(batch)
        for transform in transforms:
            transform.apply_to(batch, text, rng)
        if phrases:  # after the transforms: the phrase-region pass finds no annotated phrases here
            batch.extras[PHRASE_REGIONS] = stand_in_phrases(lengths, width, rng)
        yield normalize(batch.to(device, non_blocking=True))
        step += 1
