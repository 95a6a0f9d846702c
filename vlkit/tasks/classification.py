"""Classification-style downstream tasks on fused image-text pairs: ``ve`` (SNLI-VE, 3 classes) and
``nlvr2`` (two images, one statement, true / false), and the machinery :mod:`vlkit.tasks.vqa` shares.
Each trains the ``classify`` objective (a head on the fused [CLS]; NLVR2 concatenates the [CLS] of both
images, as VLMo does) and reports the papers' metric.

Annotation files come from the task's ``splits`` (ALBEF's formats, :mod:`vlkit.data.formats.task_data`) or,
when it names none, from the data source (the synthetic world ships ``ve_*``, ``nlvr_*``, ``vqa_*``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from vlkit import progress
from vlkit.core.errors import CheckpointError, DataError
from vlkit.core.outputs import CLASSIFY_HEAD
from vlkit.data.config import DataConfig
from vlkit.data.formats.task_data import (
    VE_LABELS,
    TaskCollate,
    TaskDataset,
    TaskEntry,
    parse_nlvr2,
    parse_ve,
    read_task_files,
)
from vlkit.data.json_dataset import AnnotationError
from vlkit.data.sources import DataSource
from vlkit.data.text import CaptionCleaner
from vlkit.data.transforms import eval_transform
from vlkit.eval.classification import accuracy
from vlkit.eval.finite import require_finite_scores
from vlkit.objectives.bifusion import BiFusionClassify, BiFusionClassifyConfig
from vlkit.objectives.classify import ClassifyConfig, pair_features
from vlkit.objectives.distill import DistillConfig
from vlkit.registry import register
from vlkit.schema import ComponentConfig
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
    parse: ClassVar[staticmethod[[Any, Path, int], TaskEntry | str]]
    """A :data:`~vlkit.data.formats.task_data.Parse` function, stored as a ``staticmethod``."""
    images_per_sample: ClassVar[int] = 1

    def __init__(self, cfg: FusedTaskConfig) -> None:
        self.cfg = cfg
        self._entries: dict[str, list[TaskEntry]] = {}
        self.known_classes: int | None = None
        """The class count when it is known without reading data (a checkpoint's head fixes it)."""

    # ------------------------------------------------------------------ data
    def files(self, source: DataSource, split: str) -> tuple[list[Path], Path]:
        """Annotation files of ``split`` and their image root."""
        root = Path(self.cfg.image_root) if self.cfg.image_root else source.image_root
        if self.cfg.splits:
            if split not in self.cfg.splits:
                raise DataError(f"task.splits names {', '.join(self.cfg.splits)}, not `{split}`")
            return [Path(f) for f in self.cfg.splits[split]], root
        return source.task_files(self.name, split), root

    def read_files(self, files: list[Path], root: Path, max_bad_fraction: float) -> list[TaskEntry]:
        """The entries of annotation ``files`` (image paths relative to ``root``)."""
        return read_task_files(files, root, type(self).parse, max_bad_fraction)[0]

    def entries(self, source: DataSource, split: str, max_bad_fraction: float = 1.0) -> list[TaskEntry]:
        """The usable entries of ``split`` (read once)."""
        if split not in self._entries:
            files, root = self.files(source, split)
            entries = self.read_files(files, root, max_bad_fraction)
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

    def class_count(self, source: DataSource, data: DataConfig) -> int:
        """:attr:`known_classes`, else :meth:`num_classes` (which may read the data)."""
        return self.known_classes if self.known_classes is not None else self.num_classes(source, data)

    def objective_config(self, source: DataSource, data: DataConfig) -> ClassifyConfig:
        return ClassifyConfig(type="classify", num_classes=self.class_count(source, data),
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
    def encoded_batches(self, ctx: TaskContext) -> EncodedBatches:
        """The evaluation split's readable samples, batched and encoded."""
        entries = self.entries(ctx.source, self.cfg.eval_split, ctx.data.max_bad_fraction)
        return EncodedBatches(entries, TaskDataset(entries, eval_transform(ctx.image_size, ctx.data.normalize)),
                              self.collate(ctx.tokenizer, ctx.source, ctx.data), ctx,
                              desc=f"{self.name}: evaluating `{self.cfg.eval_split}`")

    @torch.no_grad()
    def logits(self, ctx: TaskContext) -> tuple[Tensor, list[TaskEntry], int]:
        """``[N, C]`` logits of the evaluation split's readable samples, their entries, and the count of
        samples skipped for unreadable images."""
        head = ctx.head(self.name, CLASSIFY_HEAD)
        if head is None:
            raise CheckpointError(f"the model has no `{self.name}` head: evaluate a checkpoint fine-tuned on this task")
        outputs = []
        batches = self.encoded_batches(ctx)
        for encoded in batches:
            outputs.append(head(pair_features(encoded.fuse, encoded.size, self.images_per_sample,
                                              ctx.device)).float().cpu())
        return torch.cat(outputs), batches.entries, batches.skipped


@dataclass
class EncodedBatch:
    """One evaluation batch: its images ``[k·B, ...]`` and texts ``[B, ...]`` encoded, with the image side
    of fusion (keys/values) computed once."""

    size: int
    image: Any
    text: Any
    image_kv: Any
    encoder: Any

    def fuse(self, image_index: Tensor | None = None, text_index: Tensor | None = None) -> Any:
        return self.encoder.fuse(self.image, self.text, image_index=image_index, text_index=text_index,
                                 image_kv=self.image_kv)


class EncodedBatches:
    """Iterates :class:`EncodedBatch` over ``entries`` (a progress bar counts them under ``desc``);
    afterwards :attr:`entries` are those whose images were readable (in order) and :attr:`skipped` counts
    the others."""

    def __init__(self, entries: list[TaskEntry], dataset: TaskDataset, collate: TaskCollate, ctx: TaskContext,
                 desc: str = "evaluating") -> None:
        self._all, self.ctx, self.desc = entries, ctx, desc
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=ctx.eval.batch_size, collate_fn=collate,
                                                  num_workers=0)
        self.entries: list[TaskEntry] = []
        self.skipped = 0

    @torch.no_grad()
    def __iter__(self) -> Iterator[EncodedBatch]:
        self.entries, self.skipped, position = [], 0, 0
        encoder = self.ctx.encoder
        with progress.bar(len(self._all), self.desc, unit="sample") as bar:
            for batch in self.loader:
                rows = len(batch.idx)
                batch = batch.to(self.ctx.device)
                image = encoder.encode_image(batch.images)
                text = encoder.encode_text(batch.input_ids, batch.attention_mask)
                yield EncodedBatch(rows, image, text, encoder.image_kv(image), encoder)
                self.skipped += batch.skipped
                kept_ids = set(batch.idx.tolist())
                chunk = self._all[position:position + rows + batch.skipped]
                self.entries += [e for e in chunk if e.idx in kept_ids]
                position += rows + batch.skipped
                bar.update(rows + batch.skipped)


@register("task", "ve", config=FusedTaskConfig)
class VisualEntailment(FusedClassificationTask):
    """SNLI-VE: entailment / neutral / contradiction of a sentence given an image; ``acc``."""

    name = "ve"
    parse = staticmethod(parse_ve)

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return len(VE_LABELS)

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        logits, entries, skipped = self.logits(ctx)
        require_finite_scores(logits, f"{self.name}: classifier logits")
        return {"acc": accuracy(logits.argmax(1).tolist(), [e.label for e in entries]), "n": float(len(entries)),
                "n_skipped": float(skipped), "chance_acc": 100.0 / len(VE_LABELS)}


@dataclass(kw_only=True)
class NLVR2Config(FusedTaskConfig):
    """NLVR2.

    Attributes:
        fusion: ``pair``: each image fused with the text by the encoder, the two [CLS] concatenated
            (VLMo); ``bi``: ALBEF's bi-fusion — the fusion layers duplicated, alternate copies reading
            image 0 and image 1 with shared cross-attention keys/values, one [CLS] classified
            (``classify_bifusion`` objective; albef encoders).
    """

    fusion: Literal["pair", "bi"] = "pair"


@register("task", "nlvr2", config=NLVR2Config)
class NLVR2(FusedClassificationTask):
    """NLVR2: is the statement true of the image pair? ``acc`` and the majority-class baseline. The pair
    is classified from both images' fused [CLS] (VLMo) or through ALBEF's bi-fusion layers."""

    name = "nlvr2"
    parse = staticmethod(parse_nlvr2)
    images_per_sample = 2
    cfg: NLVR2Config

    def num_classes(self, source: DataSource, data: DataConfig) -> int:
        return 2

    def objective_config(self, source: DataSource, data: DataConfig) -> Any:
        if self.cfg.fusion == "bi":
            return BiFusionClassifyConfig(type="classify_bifusion", num_classes=2, head=self.cfg.head,
                                          distill=self.cfg.distill)
        return super().objective_config(source, data)

    @torch.no_grad()
    def logits(self, ctx: TaskContext) -> tuple[Tensor, list[TaskEntry], int]:
        if self.cfg.fusion != "bi":
            return super().logits(ctx)
        objective = ctx.objectives.get(self.name)
        if not isinstance(objective, BiFusionClassify):
            raise CheckpointError("the model has no bi-fusion `nlvr2` objective: evaluate a checkpoint fine-tuned with "
                             "task.fusion: bi")
        batches = self.encoded_batches(ctx)
        outputs = [objective.pair_logits(encoded.image.embeds, encoded.text).float().cpu() for encoded in batches]
        return torch.cat(outputs), batches.entries, batches.skipped

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        logits, entries, skipped = self.logits(ctx)
        require_finite_scores(logits, f"{self.name}: classifier logits")
        labels = [e.label for e in entries]
        majority = 100.0 * max(labels.count(0), labels.count(1)) / len(labels)
        return {"acc": accuracy(logits.argmax(1).tolist(), labels), "n": float(len(entries)),
                "n_skipped": float(skipped), "majority_acc": majority}
