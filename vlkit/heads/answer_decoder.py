"""ALBEF's generative VQA answer decoder: a causal BERT whose every layer cross-attends to the question
encoder's fused states, with an LM head tied to its own word embeddings (HF ``BertLMHeadModel`` with
``fusion_layer = 0``). State-dict layout: ``embeddings.*``, ``encoder.layer.{i}.*`` (``attention``,
``crossattention``, ``intermediate``, ``output``) and ``cls.predictions.*``, like the encoder stack and
the MLM head, so pre-trained fusion layers and the MLM head can be copied in by name.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.heads.mlm import MLMHead
from vlkit.nn.bert import KV, BertConfig, BertEmbeddings, BertEncoderLayers, BertLayer


def causal_bias(length: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[1, 1, L, L]`` additive mask: 0 on and below the diagonal, −inf above."""
    upper = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(upper, float("-inf"))[None, None]


class AnswerDecoder(nn.Module):
    """Causal text decoder over question states.

    Args:
        cfg: the text stack's shape; ``layers`` is the decoder's depth (ALBEF: 6, the fusion layers).
        backend: attention backend.
    """

    def __init__(self, cfg: BertConfig, backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoderLayers([BertLayer(cfg, encoder_width=cfg.dim, backend=backend)
                                          for _ in range(cfg.layers)])
        self.cls = MLMHead(cfg.dim, cfg.vocab_size, eps=cfg.eps, tied_weight=self.embeddings.word_embeddings.weight)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=cfg.init_std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def for_stack(cls, stack_cfg: BertConfig, layers: int, backend: str = "auto") -> AnswerDecoder:
        """A decoder of ``layers`` layers with the shape of an encoder stack."""
        return cls(dataclasses.replace(stack_cfg, layers=layers), backend)

    def question_kv(self, states: Tensor) -> list[KV]:
        """Cross-attention keys/values of question states ``[B, Lq, D]`` for every layer (computed once,
        then indexed per answer)."""
        return [self.encoder.layer_at(i).cross_kv(states) for i in range(len(self.encoder.layer))]

    def forward(self, answer_ids: Tensor, answer_mask: Tensor, question_kv: list[KV],
                question_mask: Tensor) -> Tensor:
        """Next-token logits ``[N, La, V]`` of answers ``[N, La]`` (teacher-forced, causal), each reading
        its question's keys/values (``[N, Lq, H, Dh]`` per layer) under ``question_mask [N, Lq]``."""
        hidden = self.embeddings(answer_ids)
        bias = causal_bias(answer_ids.shape[1], hidden.device, hidden.dtype)
        mask = answer_mask.bool()
        for layer, kv in zip(self.encoder.layer, question_kv, strict=True):
            hidden = layer(hidden, mask, cross_kv=kv, cross_mask=question_mask.bool(), self_bias=bias)
        return self.cls(hidden)


def sequence_nll(logits: Tensor, answer_ids: Tensor, answer_mask: Tensor) -> Tensor:
    """``[N]`` summed negative log-likelihood of each answer's tokens after the first (``[CLS]``):
    position ``t`` of ``logits [N, La, V]`` predicts token ``t + 1``; padding is ignored."""
    targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                          reduction="none")
    return nll.view(targets.shape).sum(1)


def sequence_distill(logits: Tensor, teacher_logits: Tensor, answer_mask: Tensor) -> Tensor:
    """``[N]`` summed soft cross-entropy ``−Σ softmax(teacher)·log_softmax(student)`` over each answer's
    predicted positions (ALBEF's momentum distillation of the decoder)."""
    per_token = -(teacher_logits[:, :-1].float().softmax(-1) * logits[:, :-1].float().log_softmax(-1)).sum(-1)
    return (per_token * answer_mask[:, 1:].float()).sum(1)
