"""Classification-style downstream tasks on fused image-text pairs: ``ve`` (SNLI-VE, 3 classes),
``nlvr2`` (two images, one statement, true / false) and ``vqa`` (a classifier over the answer
vocabulary, soft VQA scores). Each trains the ``classify`` objective (a head on the fused [CLS];
NLVR2 concatenates the [CLS] of both images, as VLMo does) and reports the papers' metric.

Annotation files come from the task's ``splits`` (ALBEF's formats, :mod:`vlkit.data.task_data`) or,
when it names none, from the data source (the synthetic world ships ``ve_*``, ``nlvr_*``, ``vqa_*``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from vlkit.data.config import DataConfig
from vlkit.data.json_dataset import AnnotationError
from vlkit.data.sources import DataSource
from vlkit.data.task_data import (
    VE_LABELS,
    Parse,
    TaskCollate,
    TaskDataset,
    TaskEntry,
    answer_vocabulary,
    parse_nlvr2,
    parse_ve,
    parse_vqa,
    read_task_files,
)
from vlkit.data.text import CaptionCleaner
from vlkit.data.transforms import eval_transform
from vlkit.eval.classification import accuracy, mean_vqa_accuracy
from vlkit.objectives.classify import ClassifyConfig, pair_features
from vlkit.objectives.distill import DistillConfig
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError
from vlkit.tasks.base import Task, TaskContext

log = logging.getLogger("vlkit.tasks")


@dataclass(kw_only=True)
class FusedTaskConfig(ComponentConfig):
    """Settings of every fused classification task.

    Attributes:
        splits: split name → annotation files in ALBEF's format; empty: the data source's files.
        image_root: folder the annotations' image paths are relative to (null: the source's).
        train_split: the split fine-tuning trains on.
        eval_split: the split evaluated (ALBEF selects on val, reports test).
        head: ``classifier`` (ALBEF: Linear-ReLU-Linear) or ``classifier_vlmo`` (Linear-LN-GELU-Linear).
        distill: momentum distillation (ALBEF: alpha 0.4); null: off.
    """

    splits: dict[str, list[str]] = field(default_factory=dict)
    image_root: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    head: Literal["classifier", "classifier_vlmo"] = "classifier"
    distill: DistillConfig | None = None


class FusedClassificationTask(Task):
    """Shared machinery: annotation files, the objective, loader parts, evaluation."""

    trains_own_objectives = True
    name: ClassVar[str]
    """The task's objective name and synthetic file prefix."""
    parse: ClassVar[Parse]
    images_per_sample: ClassVar[int] = 1

    def __init__(self, cfg: FusedTaskConfig) -> None:
        self.cfg = cfg
        self._entries: dict[str, list[TaskEntry]] = {}

    # ------------------------------------------------------------------ data
    def files(self, source: DataSource, split: str) -> tuple[list[Path], Path]:
        """Annotation files of ``split`` and their image root."""
        root = Path(self.cfg.image_root) if self.cfg.image_root else source.image_root
        if self.cfg.splits:
            if split not in self.cfg.splits:
                raise ValueError(f"task.splits names {', '.join(self.cfg.splits)}, not `{split}`")
            return [Path(f) for f in self.cfg.splits[split]], root
        return source.task_files(self.name, split), root

    def entries(self, source: DataSource, split: str, max_bad_fraction: float = 1.0) -> list[TaskEntry]:
        """The usable entries of ``split`` (read once)."""
        if split not in self._entries:
            files, root = self.files(source, split)
            entries, _ = read_task_files(files, root, type(self).parse, max_bad_fraction)
            if not entries:
                raise AnnotationError(f"the {self.name} `{split}` split has no usable entries")
            self._entries[split] = entries
        return self._entries[split]

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        raise NotImplementedError

    def answer_index(self, source: DataSource, data: DataConfig) -> dict[str, int] | None:
        """Answer → class id for soft-score tasks (VQA); None for labelled ones."""
        return None

    # ------------------------------------------------------------------ training
    def objective_configs(self, source: DataSource, data: DataConfig) -> dict[str, Any]:
        """The objective fine-tuning trains (it replaces the recipe's pre-training objectives)."""
        return {self.name: self.objective_config(source, data)}

    def objective_config(self, source: DataSource, data: DataConfig) -> ClassifyConfig:
        return ClassifyConfig(type="classify", num_classes=self.num_classes(source, data),
                              images_per_sample=self.images_per_sample, head=self.cfg.head, distill=self.cfg.distill)

    def train_dataset(self, source: DataSource, data: DataConfig, transform: Any, *, seed: int,
                      draft_size: int | None) -> TaskDataset:
        return TaskDataset(self.entries(source, self.cfg.train_split, data.max_bad_fraction), transform, seed=seed,
                           draft_size=draft_size)

    def collate(self, tokenizer: Any, source: DataSource, data: DataConfig) -> TaskCollate:
        clean = CaptionCleaner(data.pre_caption, data.max_words)
        return TaskCollate(tokenizer, data.max_text_len, data.drop_sep, clean=clean, padding=data.padding,
                           answer_index=self.answer_index(source, data))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits(self, ctx: TaskContext) -> tuple[Tensor, list[TaskEntry], int]:
        """``[N, C]`` logits of the evaluation split's readable samples, their entries, and the count of
        samples skipped for unreadable images."""
        head = ctx.heads.get(self.name)
        if head is None:
            raise ValueError(f"the model has no `{self.name}` head: evaluate a checkpoint fine-tuned on this task")
        entries = self.entries(ctx.source, self.cfg.eval_split, ctx.data.max_bad_fraction)
        dataset = TaskDataset(entries, eval_transform(ctx.image_size, ctx.data.normalize))
        collate = self.collate(ctx.tokenizer, ctx.source, ctx.data)
        loader = torch.utils.data.DataLoader(dataset, batch_size=ctx.eval.batch_size, collate_fn=collate,
                                             num_workers=0)
        outputs, kept, skipped, position = [], [], 0, 0
        encoder = ctx.encoder
        for batch in loader:
            rows = len(batch.idx)
            batch = batch.to(ctx.device)
            image = encoder.encode_image(batch.images)
            text = encoder.encode_text(batch.input_ids, batch.attention_mask)
            kv = encoder.image_kv(image)

            def fuse(image_index: Tensor, text_index: Tensor, image=image, text=text, kv=kv) -> Any:
                return encoder.fuse(image, text, image_index=image_index, text_index=text_index, image_kv=kv)

            outputs.append(head(pair_features(fuse, rows, self.images_per_sample, ctx.device)).float().cpu())
            skipped += batch.skipped
            kept_ids = set(batch.idx.tolist())
            chunk = entries[position:position + rows + batch.skipped]
            kept += [e for e in chunk if e.idx in kept_ids]
            position += rows + batch.skipped
        return torch.cat(outputs), kept, skipped


@register("task", "ve", config=FusedTaskConfig)
class VisualEntailment(FusedClassificationTask):
    """SNLI-VE: entailment / neutral / contradiction of a sentence given an image; ``acc``."""

    name = "ve"
    parse = staticmethod(parse_ve)

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return len(VE_LABELS)

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        logits, entries, skipped = self.logits(ctx)
        return {"acc": accuracy(logits.argmax(1).tolist(), [e.label for e in entries]), "n": float(len(entries)),
                "n_skipped": float(skipped), "chance_acc": 100.0 / len(VE_LABELS)}


@register("task", "nlvr2", config=FusedTaskConfig)
class NLVR2(FusedClassificationTask):
    """NLVR2: is the statement true of the image pair? Each image is fused with the text and the two
    [CLS] features are classified together (VLMo's pairing); ``acc``."""

    name = "nlvr2"
    parse = staticmethod(parse_nlvr2)
    images_per_sample = 2

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return 2

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        logits, entries, skipped = self.logits(ctx)
        labels = [e.label for e in entries]
        majority = 100.0 * max(labels.count(0), labels.count(1)) / len(labels)
        return {"acc": accuracy(logits.argmax(1).tolist(), labels), "n": float(len(entries)),
                "n_skipped": float(skipped), "majority_acc": majority}


@dataclass(kw_only=True)
class VQAConfig(FusedTaskConfig):
    """VQA as classification over the answers of the training split.

    Attributes:
        min_answer_count: answers given fewer times (over all annotators) are left out of the vocabulary.
        max_answers: keep at most this many, most frequent first (VQA v2 practice: 3,129).
        answer_list: a JSON list of answers to use instead of building the vocabulary.
    """

    min_answer_count: int = 1
    max_answers: int = 3129
    answer_list: str | None = None
    head: Literal["classifier", "classifier_vlmo"] = "classifier_vlmo"

    def __post_init__(self) -> None:
        if self.distill is not None:
            raise ConfigError("VQA as classification trains with soft scores; distillation is not offered",
                              key="distill")


@register("task", "vqa", config=VQAConfig)
class VQA(FusedClassificationTask):
    """VQA v2 as VLMo trains it: a classifier over the answer vocabulary with binary cross-entropy
    against soft scores ``min(#annotators / 3, 1)``; ``vqa_acc`` is the official VQA accuracy and
    ``most_frequent_acc`` that of always answering the most frequent training answer (a floor)."""

    name = "vqa"
    parse = staticmethod(parse_vqa)
    cfg: VQAConfig

    def answers(self, source: DataSource, data: DataConfig) -> list[str]:
        """The answer vocabulary (class ``i`` is answer ``i``)."""
        if self.cfg.answer_list:
            import json

            answers = json.loads(Path(self.cfg.answer_list).read_text(encoding="utf-8"))
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise AnnotationError(f"{self.cfg.answer_list}: expected a JSON list of answer strings")
            return answers[: self.cfg.max_answers]
        train = self.entries(source, self.cfg.train_split, data.max_bad_fraction)
        return answer_vocabulary(train, min_count=self.cfg.min_answer_count, max_answers=self.cfg.max_answers)

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return len(self.answers(source, data))

    def answer_index(self, source: DataSource, data: DataConfig) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.answers(source, data))}

    def objective_config(self, source: DataSource, data: DataConfig) -> ClassifyConfig:
        return ClassifyConfig(type="classify", num_classes=self.num_classes(source, data), head=self.cfg.head,
                              loss="soft_bce")

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        logits, entries, skipped = self.logits(ctx)
        vocabulary = self.answers(ctx.source, ctx.data)
        predictions = [vocabulary[i] for i in logits.argmax(1).tolist()]
        answers = [e.answers for e in entries]
        return {"vqa_acc": mean_vqa_accuracy(predictions, answers), "n": float(len(entries)),
                "n_skipped": float(skipped), "n_answers": float(len(vocabulary)),
                "most_frequent_acc": mean_vqa_accuracy([vocabulary[0]] * len(entries), answers)}
