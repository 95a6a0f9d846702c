"""Loading BERT WordPiece tokenizers and turning captions into padded id batches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vlkit.core.errors import ConfigError


class TokenizerError(RuntimeError):
    """The tokenizer could not be loaded; the message says how to provide one offline."""


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """A ``transformers`` fast BERT tokenizer from a local folder (``vocab.txt`` / ``tokenizer.json``)
    or a hub name. Offline, a hub name fails with instructions to use a local copy."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    try:
        if path.exists():
            return AutoTokenizer.from_pretrained(str(path), use_fast=True)
        return AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True)
    except OSError as err:
        raise TokenizerError(
            f"cannot load tokenizer `{name_or_path}`: {err}\n"
            "On a machine without network access, point the recipe at a local tokenizer folder instead, e.g. "
            "save one where you have network with `AutoTokenizer.from_pretrained('bert-base-uncased')"
            ".save_pretrained('tokenizers/bert-base-uncased')` and set `data.tokenizer: tokenizers/bert-base-uncased`."
        ) from None


@dataclass
class TokenizedText:
    """A tokenized batch.

    Attributes:
        input_ids: ``[B, L]`` (``L`` = longest caption in the batch, at most ``max_length``).
        attention_mask: ``[B, L]`` long, 1 for real tokens.
        word_ids: per row, the word index of each token (None for special tokens and padding),
            for whole-word masking.
        offsets: per row, each token's ``(start, end)`` character span in the text it was made from
            (``(0, 0)`` for special tokens and padding), for phrase grounding; None when unknown.
    """

    input_ids: Tensor
    attention_mask: Tensor
    word_ids: list[list[int | None]]
    offsets: list[list[tuple[int, int]]] | None = None


Padding = Literal["longest", "max_length", "multiple_of_8"]
PADDINGS: tuple[str, ...] = ("longest", "max_length", "multiple_of_8")


def padded_length(longest: int, max_length: int, padding: Padding) -> int:
    """Columns of a batch whose longest caption has ``longest`` tokens: ``longest``, ``max_length``
    (static shapes, e.g. for ``torch.compile`` or CUDA graphs), or ``longest`` rounded up to a multiple
    of 8 (tensor-core friendly; may exceed ``max_length`` by up to 7 padding columns)."""
    if padding == "longest":
        return longest
    if padding == "max_length":
        return max_length
    if padding == "multiple_of_8":
        return -(-longest // 8) * 8
    raise ConfigError(f"unknown padding `{padding}`; choose one of {', '.join(PADDINGS)}")


def tokenize(tokenizer: Any, texts: list[str], max_length: int, *, drop_sep: bool = False,
             padding: Padding = "longest") -> TokenizedText:
    """Tokenize ``texts``, truncated to ``max_length`` tokens and padded as ``padding`` says.

    Args:
        tokenizer: a fast BERT tokenizer.
        texts: the captions.
        max_length: at most this many tokens per caption, [CLS] (and [SEP]) included.
        drop_sep: remove the trailing [SEP] of each single sentence (ALBEF's tokenizer does).
        padding: see :func:`padded_length`.

    Returns:
        ``input_ids`` / ``attention_mask`` ``[B, L]`` and per-row word ids (``L`` from ``padding``).
    """
    # plain lists from the tokenizer (its tensor conversion flattens the nested offsets in Python, slowly)
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long).view(len(texts), -1)
    mask = torch.tensor(enc["attention_mask"], dtype=torch.long).view(len(texts), -1)
    spans = [[(int(a), int(b)) for a, b in row] for row in enc["offset_mapping"]]
    word_ids = [enc.word_ids(i) for i in range(len(texts))]
    if drop_sep:
        last = mask.sum(1) - 1  # index of [SEP] in each row (host tensors, in the loader)
        rows = torch.arange(ids.shape[0])
        ids[rows, last] = tokenizer.pad_token_id
        mask[rows, last] = 0
        word_ids = [[w if k < int(n) else None for k, w in enumerate(row)]
                    for row, n in zip(word_ids, last, strict=True)]
    longest = max(int(mask.sum(1).max()), 1) if len(texts) else 1
    width = padded_length(longest, max_length, padding)
    if width <= ids.shape[1]:
        ids, mask = ids[:, :width], mask[:, :width]
    else:
        extra = width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, extra), value=tokenizer.pad_token_id)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    word_ids = [(list(w) + [None] * width)[:width] for w in word_ids]
    spans = [[span if k < int(n) else (0, 0) for k, span in enumerate((row + [(0, 0)] * width)[:width])]
             for row, n in zip(spans, mask.sum(1), strict=True)]
    return TokenizedText(ids, mask, word_ids, spans)
