"""VQA (``vqa`` task): VLMo's classifier over the answer vocabulary with soft scores, or ALBEF's generative
answer decoder ranking the vocabulary as candidates (``head: rank``); ``vqa_acc`` is the official VQA
accuracy (answers normalized as the official evaluation does). Annotations: ALBEF's pre-processed lists
or the official VQA v2 questions / annotations files (:mod:`vlkit.data.formats.vqa_v2`), told apart by content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from vlkit.core.errors import CheckpointError, ConfigError
from vlkit.core.outputs import ANSWER_HEAD
from vlkit.data.config import DataConfig
from vlkit.data.formats.task_data import TaskCollate, TaskEntry, answer_vocabulary, parse_vqa, read_task_files
from vlkit.data.formats.vqa_v2 import is_vqa_v2_questions, read_vqa_v2
from vlkit.data.json_dataset import AnnotationError
from vlkit.data.sources import DataSource
from vlkit.data.tokenizer import tokenize
from vlkit.data.vqa_normalize import normalize_answer
from vlkit.eval.classification import mean_vqa_accuracy
from vlkit.eval.finite import require_finite_scores
from vlkit.heads.answer_decoder import AnswerDecoder
from vlkit.objectives.answers import GenerateAnswersConfig, rank_answers
from vlkit.objectives.classify import ClassifyConfig
from vlkit.registry import register
from vlkit.tasks.base import TaskContext
from vlkit.tasks.classification import FusedClassificationTask, FusedTaskConfig


def _is_json_list(path: Path) -> bool:
    """Whether ``path`` starts like a JSON list (ALBEF's pre-processed format)."""
    with open(path, encoding="utf-8") as handle:
        return handle.read(256).lstrip().startswith("[")



@dataclass(kw_only=True)
class VQAConfig(FusedTaskConfig):
    """VQA over the answers of the training split (or a given answer list).

    Attributes:
        head: ``classifier_vlmo`` / ``classifier``: classification over the answer vocabulary with soft
            scores (VLMo); ``rank``: ALBEF's generative answer decoder, predicting by ranking the answer
            vocabulary as candidates.
        min_answer_count: answers given fewer times (over all annotators) are left out of the vocabulary.
        max_answers: keep at most this many, most frequent first (VQA v2 practice: 3,129).
        answer_list: a JSON list of answers to use instead of building the vocabulary (ALBEF's
            ``answer_list.json``); normalized like the annotations.
        image_folder: official VQA v2 files: the folder of ``image_root`` holding the COCO images (null: the
            questions' ``data_subtype``, e.g. ``train2014``; ``""``: ``image_root`` itself).
        k_test: ``rank``: candidates scored in full (ALBEF: 128).
        first_token_twice: ``rank``: ALBEF's candidate score (see the ``generate_answers`` objective).
        decoder_layers: ``rank``: decoder depth (null: the encoder's fusion layers, which initialize it).
        answer_tokens: ``rank``: longest tokenized answer (``[CLS]`` and ``[SEP]`` included).
    """

    # widens the base's choices (the recipe validator reads each config's own Literal); VQA reads `rank` itself
    head: Literal["classifier", "classifier_vlmo", "rank"] = "classifier_vlmo"  # type: ignore[assignment]
    min_answer_count: int = 1
    max_answers: int = 3129
    answer_list: str | None = None
    image_folder: str | None = None
    k_test: int = 128
    first_token_twice: bool = True
    decoder_layers: int | None = None
    answer_tokens: int = 12

    def __post_init__(self) -> None:
        if self.distill is not None and self.head != "rank":
            raise ConfigError("VQA as classification trains with soft scores; distillation is offered for the "
                              "generative decoder (`head: rank`)", key="distill")
        if self.answer_tokens < 3:
            raise ConfigError("must be ≥ 3 ([CLS], one token, [SEP])", key="answer_tokens")


@register("task", "vqa", config=VQAConfig)
class VQA(FusedClassificationTask):
    """VQA v2: VLMo's classifier over the answer vocabulary (binary cross-entropy against soft scores
    ``min(#annotators / 3, 1)``) or ALBEF's answer decoder ranking the vocabulary (``head: rank``);
    ``vqa_acc`` is the official VQA accuracy and ``most_frequent_acc`` that of always answering the most
    frequent training answer (a floor)."""

    name = "vqa"
    parse = staticmethod(parse_vqa)
    cfg: VQAConfig

    def read_files(self, files: list[Path], root: Path, max_bad_fraction: float) -> list[TaskEntry]:
        """ALBEF's VQA lists and official VQA v2 questions files (each followed by its annotations file,
        when the split has answers), in the order given."""
        entries: list[TaskEntry] = []
        position = 0
        while position < len(files):
            file = files[position]
            if is_vqa_v2_questions(file):
                following = files[position + 1] if position + 1 < len(files) else None
                annotations = following if following is not None and not is_vqa_v2_questions(following) \
                    and not _is_json_list(following) else None
                found, _ = read_vqa_v2(file, annotations, root, image_folder=self.cfg.image_folder,
                                       max_bad_fraction=max_bad_fraction)
                position += 2 if annotations is not None else 1
            else:
                found, _ = read_task_files([file], root, parse_vqa, max_bad_fraction)
                position += 1
            entries += found
        return entries

    def answers(self, source: DataSource, data: DataConfig) -> list[str]:
        """The answer vocabulary (class ``i`` is answer ``i``; the ``rank`` head's candidates)."""
        if self.cfg.answer_list:
            answers = json.loads(Path(self.cfg.answer_list).read_text(encoding="utf-8"))
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise AnnotationError(f"{self.cfg.answer_list}: expected a JSON list of answer strings")
            normalized = list(dict.fromkeys(n for a in answers if (n := normalize_answer(a))))
            return normalized[: self.cfg.max_answers]
        train = self.entries(source, self.cfg.train_split, data.max_bad_fraction)
        return answer_vocabulary(train, min_count=self.cfg.min_answer_count, max_answers=self.cfg.max_answers)

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return len(self.answers(source, data))

    def answer_index(self, source: DataSource, data: DataConfig) -> dict[str, int] | None:
        return None if self.cfg.head == "rank" else {a: i for i, a in enumerate(self.answers(source, data))}

    def objective_config(self, source: DataSource, data: DataConfig) -> Any:
        cfg = self.cfg
        if cfg.head == "rank":
            return GenerateAnswersConfig(type="generate_answers", layers=cfg.decoder_layers, k_test=cfg.k_test,
                                         first_token_twice=cfg.first_token_twice, distill=cfg.distill)
        return ClassifyConfig(type="classify", num_classes=self.class_count(source, data), head=cfg.head,
                              loss="soft_bce")

    def collate(self, tokenizer: Any, source: DataSource, data: DataConfig) -> TaskCollate:
        collate = super().collate(tokenizer, source, data)
        if self.cfg.head == "rank":
            collate.answer_tokens = self.cfg.answer_tokens
        return collate

    @torch.no_grad()
    def ranked(self, ctx: TaskContext) -> tuple[list[str], list[TaskEntry], int]:
        """``rank`` head: each readable evaluation sample's predicted answer, the entries, and the count
        skipped for unreadable images."""
        decoder = ctx.head(self.name, ANSWER_HEAD)
        if not isinstance(decoder, AnswerDecoder):
            raise CheckpointError("the model has no `vqa` answer decoder: evaluate a checkpoint fine-tuned with "
                                  "head: rank")
        vocabulary = self.answers(ctx.source, ctx.data)
        candidates = tokenize(ctx.tokenizer, vocabulary, self.cfg.answer_tokens)
        candidate_ids, candidate_mask = candidates.input_ids.to(ctx.device), candidates.attention_mask.to(ctx.device)
        predictions: list[str] = []
        batches = self.encoded_batches(ctx)
        for encoded in batches:
            fused = encoded.fuse().text
            require_finite_scores(fused, "vqa: fused question tokens the answer decoder reads")
            best = rank_answers(decoder, fused, encoded.text.mask, candidate_ids, candidate_mask,
                                k=self.cfg.k_test, first_token_twice=self.cfg.first_token_twice,
                                pair_batch=ctx.eval.batch_size * 8)
            predictions += [vocabulary[i] for i in best.tolist()]
        return predictions, batches.entries, batches.skipped

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        vocabulary = self.answers(ctx.source, ctx.data)
        if self.cfg.head == "rank":
            predictions, entries, skipped = self.ranked(ctx)
        else:
            logits, entries, skipped = self.logits(ctx)
            require_finite_scores(logits, "vqa: answer logits")
            predictions = [vocabulary[i] for i in logits.argmax(1).tolist()]
        answers = [e.answers for e in entries]
        return {"vqa_acc": mean_vqa_accuracy(predictions, answers), "n": float(len(entries)),
                "n_skipped": float(skipped), "n_answers": float(len(vocabulary)),
                "most_frequent_acc": mean_vqa_accuracy([vocabulary[0]] * len(entries), answers)}
