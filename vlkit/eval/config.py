"""The recipe's ``eval`` section."""

from __future__ import annotations

from dataclasses import dataclass

from vlkit.schema import ConfigError


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation at the end of training (and every ``train.eval_every`` steps).

    Attributes:
        split: the split evaluated.
        k_test: ITM re-ranks the top ``k_test`` candidates of the contrastive ranking (ALBEF: 256
            on COCO, 128 on Flickr30K); 0: contrastive scores only.
        batch_size: images / texts / pairs per forward.
        swap_probe: run the compositional probe when the split has swap annotations.
    """

    split: str = "test"
    k_test: int = 16
    batch_size: int = 64
    swap_probe: bool = True

    def __post_init__(self) -> None:
        if self.k_test < 0:
            raise ConfigError("must be ≥ 0", key="k_test")
        if self.batch_size < 1:
            raise ConfigError("must be at least 1", key="batch_size")
