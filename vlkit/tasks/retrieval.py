"""Image-text retrieval fine-tuning (COCO / Flickr30K Karpathy splits in ALBEF's JSON): the recipe's
own objectives (ALBEF: ITC with ``idx``-aware targets and ITM whose negatives never share an ``idx``;
VLMo / dual encoders: ITC only) trained on the data source's pairs, evaluated by ITC over the whole
gallery then ITM re-ranking of the top ``eval.k_test`` (fusion encoders with an ITM head)."""

from __future__ import annotations

from dataclasses import dataclass

from vlkit.eval.runner import PretrainEvaluator
from vlkit.registry import register
from vlkit.schema import ComponentConfig
from vlkit.tasks.base import Task, TaskContext


@dataclass(kw_only=True)
class RetrievalConfig(ComponentConfig):
    """Retrieval.

    Attributes:
        swap_probe: also report the compositional swap probe when the split has one.
    """

    swap_probe: bool = False


@register("task", "retrieval", config=RetrievalConfig)
class Retrieval(Task):
    """Retrieval recalls (``txt_r1 … img_r10``, ``r_mean``) on ``eval.split`` of the data source."""

    def __init__(self, cfg: RetrievalConfig) -> None:
        self.cfg = cfg

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        eval_cfg = ctx.eval if self.cfg.swap_probe == ctx.eval.swap_probe else \
            type(ctx.eval)(**{**vars(ctx.eval), "swap_probe": self.cfg.swap_probe})
        evaluator = PretrainEvaluator(ctx.encoder, ctx.match_head, ctx.source, ctx.tokenizer, ctx.data, eval_cfg,
                                      ctx.image_size, ctx.device)
        return evaluator()
