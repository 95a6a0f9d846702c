"""ALBEF's generative VQA: an answer decoder (:class:`~vlkit.heads.answer_decoder.AnswerDecoder`) reads
the fused question states and is trained to generate each annotated answer, weighted by its share of
the annotations; optional momentum distillation of the decoder's token distributions. Answers are
predicted by ranking a candidate list (:func:`rank_answers`).

Batch contract: images ``[B, 3, H, W]``, questions ``[B, Lq]``, and in ``extras``: ``answer_ids`` /
``answer_mask`` ``[N, La]`` (``[CLS] answer [SEP]``, the distinct answers of every question),
``answer_question [N]`` (the question each answer belongs to) and ``answer_weights [N]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from vlkit.core.batch import ANSWER_IDS, ANSWER_MASK, ANSWER_QUESTION, ANSWER_WEIGHTS
from vlkit.core.encodings import KV
from vlkit.core.outputs import ANSWER_HEAD, ObjectiveOutput
from vlkit.core.ranges import MAX_LAYERS, check_count
from vlkit.core.step import StepView
from vlkit.heads.answer_decoder import AnswerDecoder, sequence_distill, sequence_nll
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.bifusion import fusion_stack
from vlkit.objectives.distill import DistillConfig
from vlkit.registry import register


@dataclass(kw_only=True)
class GenerateAnswersConfig(ObjectiveConfig):
    """The answer decoder.

    Attributes:
        layers: decoder depth; null: as many as the encoder's fusion layers (ALBEF: 6), which
            initialize it (``init_from``) together with the text embeddings and the MLM head.
        mlm_objective: name of the pre-training MLM objective whose head initializes the LM head.
        k_test: candidates re-scored in full after ranking by the first token's probability (ALBEF: 128).
        first_token_twice: score a candidate ``log p(first) + log p(answer)`` as ALBEF's ``rank_answer``
            does (the first token counted twice); false: ``log p(answer)``.
        distill: momentum distillation of the decoder (ALBEF: alpha 0.4); null: off.
    """

    layers: int | None = None
    mlm_objective: str = "mlm"
    k_test: int = 128
    first_token_twice: bool = True
    distill: DistillConfig | None = None

    requires_fusion: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            check_count("layers", self.layers, high=MAX_LAYERS)
        check_count("k_test", self.k_test)

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None


def _rows(kv: list[KV], index: Tensor) -> list[KV]:
    return [(k[index], v[index]) for k, v in kv]


@register("objective", "generate_answers")
class GenerateAnswers(Objective):
    """Answer generation for VQA (see the module docstring). ``head`` is the decoder."""

    Config = GenerateAnswersConfig

    def __init__(self, cfg: GenerateAnswersConfig, name: str = "vqa", *, decoder: AnswerDecoder,
                 stack_prefix: str, fusion_start: int) -> None:
        super().__init__(cfg, name)
        self.cfg: GenerateAnswersConfig = cfg
        self.head = decoder
        self._stack_prefix = stack_prefix
        self.fusion_start = fusion_start

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> GenerateAnswers:
        """A decoder shaped after the encoder's fusion layers (``cfg.layers`` of them, default all)."""
        assert isinstance(cfg, GenerateAnswersConfig)
        stack, prefix = fusion_stack(parts.encoder,
                                     needed_by="the answer decoder (VQA head: rank; mome: classifier_vlmo)")
        decoder = AnswerDecoder.for_stack(stack.cfg, cfg.layers or len(stack.fusion_layers),
                                          backend=stack.attention_backend)
        return cls(cfg, name, decoder=decoder, stack_prefix=prefix, fusion_start=stack.fusion_layer)

    def heads(self) -> dict[str, torch.nn.Module]:
        return {ANSWER_HEAD: self.head}

    def teacher_modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.head} if self.cfg.distill is not None else {}

    def init_aliases(self) -> dict[str, str]:
        """Decoder ← pre-training weights: layer ``i`` ← fusion layer ``i`` of the text stack (self-attention,
        cross-attention, FFN), embeddings ← the text embeddings, LM head ← the MLM head (as ALBEF)."""
        out = {}
        for key in self.head.state_dict():
            part, _, rest = key.partition(".")
            if part == "embeddings":
                out[f"head.{key}"] = f"{self._stack_prefix}{key}"
            elif part == "encoder":
                index, _, tail = rest.removeprefix("layer.").partition(".")
                out[f"head.{key}"] = f"{self._stack_prefix}encoder.layer.{self.fusion_start + int(index)}.{tail}"
            elif part == "cls":
                out[f"head.{key}"] = f"objectives.{self.cfg.mlm_objective}.head.{rest}"
        return out

    def sequence_losses(self, decoder: AnswerDecoder, states: Tensor, question_mask: Tensor,
                        extras: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits ``[N, La, V]`` of every answer under its question and their NLL sums ``[N]``."""
        index = extras[ANSWER_QUESTION]
        kv = _rows(decoder.question_kv(states), index)
        logits = decoder(extras[ANSWER_IDS], extras[ANSWER_MASK], kv, question_mask[index])
        return logits, sequence_nll(logits, extras[ANSWER_IDS], extras[ANSWER_MASK])

    def forward(self, step: StepView) -> ObjectiveOutput:
        batch, cfg = step.batch, self.cfg
        fused = step.fuse()
        mask = step.text.mask
        logits, nll = self.sequence_losses(self.head, fused.text, mask, batch.extras)
        alpha = cfg.distill.alpha_at(step.teacher_steps) if cfg.distill is not None else 0.0
        per_answer = nll
        if alpha > 0.0 and step.teacher_ready:
            teacher = step.teacher
            decoder = teacher.module(f"{self.name}.head")
            if not isinstance(decoder, AnswerDecoder):
                raise TypeError(f"the teacher's {self.name}.head is a {type(decoder).__name__}, not an AnswerDecoder")
            with torch.no_grad():
                teacher_logits, _ = self.sequence_losses(decoder, teacher.fuse().text, mask, batch.extras)
            per_answer = (1.0 - alpha) * nll + alpha * sequence_distill(logits, teacher_logits,
                                                                        batch.extras[ANSWER_MASK])
        loss = (batch.extras[ANSWER_WEIGHTS] * per_answer).sum() / batch.size
        schedule = {} if cfg.distill is None else {"alpha": alpha}
        return ObjectiveOutput(loss, {"nll": (nll.detach().mean() if nll.numel() else nll.new_zeros(()))}, schedule)


@torch.no_grad()
def rank_answers(decoder: AnswerDecoder, states: Tensor, question_mask: Tensor, candidate_ids: Tensor,
                 candidate_mask: Tensor, *, k: int, first_token_twice: bool = True, pair_batch: int = 512) -> Tensor:
    """ALBEF's ``rank_answer``: index ``[B]`` of the best of ``C`` candidates (``[C, La]`` ids, each
    ``[CLS] answer [SEP]``) per question (states ``[B, Lq, D]``, mask ``[B, Lq]``): the decoder's
    first-step distribution after [CLS] picks the ``k`` candidates with the likeliest first token; those
    are scored in full, teacher-forced (``log p(answer)``, plus ``log p(first token)`` again when
    ``first_token_twice``, as ALBEF), ``pair_batch`` sequences at a time, and the best is kept."""
    k = min(k, candidate_ids.shape[0])
    kv = decoder.question_kv(states)
    start = candidate_ids[:1, :1].expand(states.shape[0], 1)
    first = decoder(start, torch.ones_like(start), kv, question_mask)[:, 0].float().softmax(-1)  # [B, V]
    top_p, top = first[:, candidate_ids[:, 1]].topk(k, dim=1)  # [B, k]
    scores = []
    per_chunk = max(1, pair_batch // k)
    for begin in range(0, states.shape[0], per_chunk):
        rows = torch.arange(begin, min(begin + per_chunk, states.shape[0]), device=states.device)
        chosen = top[rows].flatten()
        index = rows.repeat_interleave(k)
        logits = decoder(candidate_ids[chosen], candidate_mask[chosen], _rows(kv, index), question_mask[index])
        scores.append(-sequence_nll(logits, candidate_ids[chosen], candidate_mask[chosen]).view(len(rows), k))
    score = torch.cat(scores)
    if first_token_twice:
        score = score + top_p.clamp_min(1e-30).log()
    return top.gather(1, score.argmax(1, keepdim=True))[:, 0]
