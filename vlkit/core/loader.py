"""What an objective asks of the data loader, declared in its config and carried out in ``vlkit.data``.

An objective config lists :class:`LoaderRequest` values (``ObjectiveConfig.loader_requests()``); the data
pipeline turns each into a picklable batch transform that runs in the loader workers, on the CPU (MLM
masking, phrase regions) or into a collate option (annotated hard negatives). Each request also names the
annotation field it reads, so a recipe can be checked against its data before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vlkit.core.batch import HARD_NEGATIVES
from vlkit.core.errors import ConfigError


@dataclass(kw_only=True)
class MaskingConfig:
    """Masked-language-model corruption of the batch's text (BERT / ALBEF rules, 80/10/10).

    Attributes:
        mask_prob: probability that an eligible token (or word) is selected (BERT / ALBEF: 0.15).
        mask_token_prob: share of selected tokens replaced by ``[MASK]`` (0.8).
        random_token_prob: share replaced by a random id (0.1); the rest stay unchanged.
        whole_word: select whole words (all WordPieces of a word together), as VLMo does.
    """

    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word: bool = False

    annotation: ClassVar[str | None] = None
    """The annotation field the request reads (None: captions only)."""

    def __post_init__(self) -> None:
        for key, value in (("mask_prob", self.mask_prob), ("mask_token_prob", self.mask_token_prob),
                           ("random_token_prob", self.random_token_prob)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {value}", key=key)
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ConfigError("mask_token_prob + random_token_prob must be ≤ 1", key="random_token_prob")

    @property
    def masking(self) -> MaskingConfig:
        """The rates alone (configs that extend this class carry other settings too)."""
        return MaskingConfig(mask_prob=self.mask_prob, mask_token_prob=self.mask_token_prob,
                             random_token_prob=self.random_token_prob, whole_word=self.whole_word)


@dataclass(frozen=True)
class PhraseRegionsRequest:
    """Match each caption's annotated phrases (``phrases``) to its tokens: ``Batch.extras["phrase_regions"]``."""

    annotation: ClassVar[str | None] = "phrases"


@dataclass(frozen=True)
class HardNegativesRequest:
    """Draw and tokenize one annotated negative caption per row (``hard_negatives``):
    ``Batch.extras["hard_negatives"]``."""

    annotation: ClassVar[str | None] = HARD_NEGATIVES


LoaderRequest = MaskingConfig | PhraseRegionsRequest | HardNegativesRequest
"""Everything the loader knows how to prepare for an objective."""
