"""Masked language modelling conditioned on the image (ALBEF / VLMo MLM), with optional momentum
distillation; on text-only batches (VLMo's stage 2) the masked text is encoded alone. The vocabulary
head runs on the masked positions only; the masked positions come from the data loader (masking is this
objective's loader request, :class:`~vlkit.core.loader.MaskingConfig`) as an index, so no device sync is
needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.loader import LoaderRequest, MaskingConfig
from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.step import StepView
from vlkit.heads.mlm import MLMHead, MLMHeadConfig
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.distill import DistillConfig, soft_cross_entropy
from vlkit.registry import register


@dataclass(kw_only=True)
class MLMConfig(ObjectiveConfig, MaskingConfig):
    """Masked language modelling (masking rates from :class:`~vlkit.core.loader.MaskingConfig`, which the
    data loader applies to each batch).

    Attributes:
        distill: momentum distillation over the masked positions (ALBEF: alpha 0.4); null: none.
        tie_word_embeddings: tie the vocabulary decoder to the word embeddings (BERT, ALBEF);
            VLMo's decoder is untied.
    """

    distill: DistillConfig | None = None
    tie_word_embeddings: bool = True

    requires_fusion: ClassVar[bool] = True
    modalities: ClassVar[frozenset[str]] = frozenset({"pair", "text"})

    def __post_init__(self) -> None:
        ObjectiveConfig.__post_init__(self)
        MaskingConfig.__post_init__(self)

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None

    def loader_requests(self) -> tuple[LoaderRequest, ...]:
        return (self.masking,)


def gather_positions(tokens: Tensor, positions: Tensor) -> Tensor:
    """Rows of ``tokens`` ``[B, L, D]`` at flat ``positions`` ``[N]`` → ``[N, D]``."""
    return tokens.flatten(0, 1).index_select(0, positions)


def _masked_tokens(view: StepView, text_only: bool) -> Tensor:
    """The masked text's tokens ``[B, L, D]``: from the text layers alone (``text_only``) or fused."""
    if not text_only:
        return view.fuse(text=view.masked_text).text
    embeds = view.masked_text_alone.embeds
    if embeds is None:
        raise RuntimeError("the encoder returned no tokens (embeds) for the masked text")
    return embeds


@register("objective", "mlm")
class MLM(Objective):
    """Masked language modelling on the fused text, head on masked positions only."""

    Config = MLMConfig

    def __init__(self, cfg: MLMConfig, name: str = "mlm", *, head: MLMHead) -> None:
        super().__init__(cfg, name)
        self.cfg: MLMConfig = cfg
        self.head = head

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> MLM:
        assert isinstance(cfg, MLMConfig)
        head = MLMHead.build(parts.encoder, MLMHeadConfig(tie_word_embeddings=cfg.tie_word_embeddings))
        return cls(cfg, name, head=head)

    def teacher_modules(self) -> dict[str, nn.Module]:
        return {"head": self.head} if self.cfg.distill is not None else {}

    def forward(self, step: StepView) -> ObjectiveOutput:
        mlm = step.batch.mlm
        if mlm is None:
            raise RuntimeError("the batch carries no masked text; the data pipeline must carry out this "
                               "objective's loader_requests()")
        text_only = step.batch.images is None  # VLMo's stage 2: the text alone, through the text experts
        tokens = _masked_tokens(step, text_only)
        logits = self.head(gather_positions(tokens, mlm.positions)).float()
        loss = F.cross_entropy(logits, mlm.labels)
        metrics = {"acc": (logits.argmax(1) == mlm.labels).float().mean().detach(), "loss_ce": loss.detach()}
        if self.cfg.distill is not None and step.teacher_ready:
            alpha = self.cfg.distill.alpha_at(step.teacher_steps)
            teacher = step.teacher
            with torch.no_grad():
                tokens_m = _masked_tokens(teacher, text_only)
                logits_m = teacher.module(f"{self.name}.head")(gather_positions(tokens_m, mlm.positions))
            distill = soft_cross_entropy(logits, F.softmax(logits_m.float(), dim=-1))
            loss = (1 - alpha) * loss + alpha * distill
            metrics["loss_distill"] = distill.detach()
        schedule = {} if self.cfg.distill is None else {"alpha": self.cfg.distill.alpha_at(step.teacher_steps)}
        return ObjectiveOutput(loss=loss, metrics=metrics, schedule=schedule)
