"""The loader side of what objectives ask for (:mod:`vlkit.core.loader`): each request becomes a picklable
batch transform that runs in the loader workers, or a collate option."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vlkit.core.batch import PHRASE_REGIONS, Batch
from vlkit.core.errors import UserError
from vlkit.core.loader import HardNegativesRequest, LoaderRequest, MaskingConfig, PhraseRegionsRequest
from vlkit.data.collate import PHRASES, PHRASES_VOIDED, BatchTransform
from vlkit.data.masking import TokenMasker
from vlkit.data.phrases import phrase_regions
from vlkit.data.tokenizer import TokenizedText
from vlkit.data.tokens import TextTokens


@dataclass
class PhraseRegionTransform:
    """Batch transform: the collated phrases (``Batch.extras["phrases"]``) and the token offsets →
    :class:`~vlkit.core.batch.PhraseRegions` in ``Batch.extras["phrase_regions"]`` (an empty set when the
    batch has no phrases)."""

    def apply_to(self, batch: Batch, text: TokenizedText, rng: np.random.Generator) -> None:
        phrases = batch.extras.pop(PHRASES, None)
        voided = int(batch.extras.pop(PHRASES_VOIDED, 0))
        width = text.input_ids.shape[1]
        if phrases is None or text.offsets is None:
            regions = phrase_regions([()] * batch.size, [[]] * batch.size, width)
        else:
            regions = phrase_regions(phrases, text.offsets, width)
        regions.dropped += voided
        batch.extras[PHRASE_REGIONS] = regions


def batch_transforms(requests: Iterable[LoaderRequest], tokens: TextTokens | None) -> list[BatchTransform]:
    """The batch transforms that carry out ``requests``, in order (one phrase-region pass however many
    objectives ask for it); ``tokens`` are the tokenizer's special ids (MLM masking needs them)."""
    out: list[BatchTransform] = []
    regions = False
    for request in requests:
        if isinstance(request, MaskingConfig):
            if tokens is None:
                raise UserError("masked language modelling needs a tokenizer: set `data.tokenizer`")
            out.append(TokenMasker(request.masking, mask_id=tokens.mask_id, vocab_size=tokens.vocab_size,
                                   special_ids=tokens.never_masked))
        elif isinstance(request, PhraseRegionsRequest) and not regions:
            out.append(PhraseRegionTransform())
            regions = True
    return out


def wants_hard_negatives(requests: Iterable[LoaderRequest]) -> bool:
    """Whether the collate function must draw annotated hard-negative captions."""
    return any(isinstance(r, HardNegativesRequest) for r in requests)
