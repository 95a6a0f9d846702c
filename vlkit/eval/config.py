"""The recipe's ``eval`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlkit.core.ranges import check_count


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation at the end of training (and every ``train.eval_every`` steps).

    Attributes:
        split: the split evaluated.
        k_test: ITM re-ranks the top ``k_test`` candidates of the contrastive ranking (ALBEF: 256
            on COCO, 128 on Flickr30K); 0: contrastive scores only.
        batch_size: images / texts / pairs per forward.
        swap_probe: run the compositional probe when the split has swap annotations.
        query_chunk: retrieval queries scored at a time (memory ``query_chunk × gallery`` per score row
            block; no whole similarity matrix is held).
        gallery_on: where the gallery's token encodings wait for re-ranking: ``device``, or ``cpu`` for
            galleries whose tokens do not fit next to the model (COCO 5k test images at 384 px: 577
            tokens × 768 × 5k ≈ 4.4 GB in bf16).
    """

    split: str = "test"
    k_test: int = 16
    batch_size: int = 64
    swap_probe: bool = True
    query_chunk: int = 1024
    gallery_on: Literal["device", "cpu"] = "device"

    def __post_init__(self) -> None:
        check_count("k_test", self.k_test, low=0)
        check_count("batch_size", self.batch_size)
        check_count("query_chunk", self.query_chunk)
