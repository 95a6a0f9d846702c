"""Masked language modelling conditioned on the image (ALBEF / VLMo MLM), with optional momentum
distillation; on text-only batches (VLMo's stage 2) the masked text is encoded alone. The vocabulary
head runs on the masked positions only; the masked positions come from the data loader
(:class:`vlkit.data.masking.TokenMasker`) as an index, so no device sync is needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.data.masking import MaskingConfig, TokenMasker
from vlkit.heads.mlm import MLMHead, MLMHeadConfig
from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput
from vlkit.objectives.distill import DistillConfig, soft_cross_entropy
from vlkit.objectives.step import Step
from vlkit.registry import register


@dataclass(kw_only=True)
class MLMConfig(ObjectiveConfig, MaskingConfig):
    """Masked language modelling (masking rates from :class:`~vlkit.data.masking.MaskingConfig`).

    Attributes:
        distill: momentum distillation over the masked positions (ALBEF: alpha 0.4); null: none.
        tie_word_embeddings: tie the vocabulary decoder to the word embeddings (BERT, ALBEF);
            VLMo's decoder is untied.
    """

    distill: DistillConfig | None = None
    tie_word_embeddings: bool = True

    requires_fusion: ClassVar[bool] = True
    modalities: ClassVar[frozenset[str]] = frozenset({"pair", "text"})

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None

    @property
    def masking(self) -> MaskingConfig:
        return MaskingConfig(mask_prob=self.mask_prob, mask_token_prob=self.mask_token_prob,
                             random_token_prob=self.random_token_prob, whole_word=self.whole_word)


def gather_positions(tokens: Tensor, positions: Tensor) -> Tensor:
    """Rows of ``tokens`` ``[B, L, D]`` at flat ``positions`` ``[N]`` → ``[N, D]``."""
    return tokens.flatten(0, 1).index_select(0, positions)


@register("objective", "mlm")
class MLM(Objective):
    """Masked language modelling on the fused text, head on masked positions only."""

    Config = MLMConfig

    def __init__(self, cfg: MLMConfig, name: str = "mlm", ctx: ObjectiveContext | None = None) -> None:
        super().__init__(cfg, name, ctx)
        if ctx is None or ctx.tokens is None:
            raise ValueError("MLM needs the encoder and the tokenizer's special tokens (pass ctx with tokens)")
        self.cfg: MLMConfig = cfg
        self.head = MLMHead.build(ctx.encoder, MLMHeadConfig(tie_word_embeddings=cfg.tie_word_embeddings))
        tokens = ctx.tokens
        self.masker = TokenMasker(cfg.masking, mask_id=tokens.mask_id, vocab_size=tokens.vocab_size,
                                  special_ids=tokens.never_masked)

    def batch_transform(self) -> TokenMasker:
        return self.masker

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head} if self.cfg.distill is not None else {}

    def forward(self, step: Step) -> ObjectiveOutput:
        mlm = step.batch.mlm
        if mlm is None:
            raise RuntimeError("the batch carries no masked text; the data pipeline must apply this objective's "
                               "batch_transform()")
        text_only = step.batch.images is None  # VLMo's stage 2: the text alone, through the text experts
        tokens = step.masked_text_alone.embeds if text_only else step.fuse(text=step.masked_text).text
        logits = self.head(gather_positions(tokens, mlm.positions)).float()
        loss = F.cross_entropy(logits, mlm.labels)
        metrics = {"acc": (logits.argmax(1) == mlm.labels).float().mean().detach(), "loss_ce": loss.detach()}
        if self.cfg.distill is not None and step.teacher_ready:
            alpha = self.cfg.distill.alpha_at(step.teacher_steps)
            teacher = step.teacher
            with torch.no_grad():
                tokens_m = (teacher.masked_text_alone.embeds if text_only
                            else teacher.fuse(text=teacher.masked_text).text)
                logits_m = teacher.module(f"{self.name}.head")(gather_positions(tokens_m, mlm.positions))
            distill = soft_cross_entropy(logits, F.softmax(logits_m.float(), dim=-1))
            loss = (1 - alpha) * loss + alpha * distill
            metrics["loss_distill"] = distill.detach()
        return ObjectiveOutput(loss=loss, metrics=metrics)
