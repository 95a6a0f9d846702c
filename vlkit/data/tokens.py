"""Special-token facts of a tokenizer that models and maskers need (no tokenizer object required)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlkit.core.errors import DataError


@dataclass(frozen=True)
class TextTokens:
    """Ids of BERT's special tokens and the vocabulary size.

    Attributes:
        pad_id: ``[PAD]``.
        cls_id: ``[CLS]``.
        sep_id: ``[SEP]``.
        mask_id: ``[MASK]``.
        unk_id: ``[UNK]``.
        vocab_size: number of ids (``len(tokenizer)``).
    """

    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    unk_id: int
    vocab_size: int

    @property
    def never_masked(self) -> frozenset[int]:
        """Ids MLM never selects: ``[PAD]``, ``[CLS]``, ``[SEP]`` (and ``[MASK]`` itself)."""
        return frozenset({self.pad_id, self.cls_id, self.sep_id, self.mask_id})

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TextTokens:
        """Read the ids from a ``transformers`` BERT tokenizer; a missing special token is a :class:`DataError`."""
        ids = {}
        for name in ("pad", "cls", "sep", "mask", "unk"):
            value = getattr(tokenizer, f"{name}_token_id", None)
            if value is None:
                raise DataError(f"the tokenizer has no [{name.upper()}] token; vlkit needs a BERT-style tokenizer "
                                "(set data.tokenizer to a BERT WordPiece tokenizer folder or hub name)")
            ids[f"{name}_id"] = int(value)
        return cls(vocab_size=len(tokenizer), **ids)
