"""Downstream-task annotations in ALBEF's formats, and their loader parts.

- VE (SNLI-VE): ``[{"image", "sentence", "label": "entailment" | "neutral" | "contradiction"}]``.
- NLVR2: ``[{"images": [left, right], "sentence", "label": "True" | "False"}]``.
- VQA: ``[{"question_id", "image", "question", "answer": [str, ...]}]`` (one answer per annotator), answers
  normalized as the official VQA evaluation does (:func:`~vlkit.data.vqa_normalize.normalize_answer`); the
  official VQA v2 files are read by :mod:`vlkit.data.formats.vqa_v2`.

Each becomes :class:`TaskEntry` (image paths, text, target); malformed entries are skipped, counted
and named like pre-training annotations (a file beyond ``max_bad_fraction`` is an error).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlkit.core.batch import Batch
from vlkit.core.errors import DataError
from vlkit.data.bad_samples import BadSample, BadSampleLog
from vlkit.data.collate import PretrainCollate, stack_images, unusable_text
from vlkit.data.json_dataset import MAX_LOGGED, AnnotationError, KeyedImageDataset, read_annotation_list
from vlkit.data.safe_io import unicode_problem
from vlkit.data.tokenizer import tokenize
from vlkit.data.vqa_normalize import normalize_answer

log = logging.getLogger("vlkit.data")

VE_LABELS: tuple[str, ...] = ("contradiction", "neutral", "entailment")  # ALBEF's ids 0, 1, 2


@dataclass(frozen=True)
class TaskEntry:
    """One annotated sample.

    Attributes:
        images: its image paths (NLVR2: two).
        text: the sentence or question.
        label: class id (VE, NLVR2), or -1 when the task has soft targets.
        answers: the annotators' answers (VQA), else empty.
        idx: the sample's id (``question_id``, else its position).
        source: the annotation file it came from (``""``: unknown).
        index: its position in that file.
    """

    images: tuple[Path, ...]
    text: str
    label: int = -1
    answers: tuple[str, ...] = ()
    idx: int = 0
    source: str = ""
    index: int | None = None


Parse = Callable[[Any, Path, int], "TaskEntry | str"]
"""``(item, image_root, position)`` → an entry, or why the item is unusable."""


def _text(item: dict[str, Any], key: str) -> str | None:
    """The non-empty string ``item[key]`` (stripped) if it is valid Unicode (the tokenizer rejects a
    lone surrogate), else None."""
    value = item.get(key)
    if not isinstance(value, str) or not value.strip() or unicode_problem(value) is not None:
        return None
    return value.strip()


def parse_ve(item: Any, root: Path, position: int) -> TaskEntry | str:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        return "no `image` path"
    if (sentence := _text(item, "sentence")) is None:
        return "no `sentence` (a non-empty string of valid Unicode)"
    if item.get("label") not in VE_LABELS:
        return f"`label` must be one of {', '.join(VE_LABELS)}"
    return TaskEntry((root / item["image"],), sentence, VE_LABELS.index(item["label"]), idx=position)


def parse_nlvr2(item: Any, root: Path, position: int) -> TaskEntry | str:
    if not isinstance(item, dict):
        return "not a mapping"
    images = item.get("images")
    if not isinstance(images, list) or len(images) != 2 or not all(isinstance(i, str) for i in images):
        return "`images` must be a list of two paths"
    if (sentence := _text(item, "sentence")) is None:
        return "no `sentence` (a non-empty string of valid Unicode)"
    label = item.get("label")
    truth = {"True": 1, "False": 0, True: 1, False: 0}.get(label) if isinstance(label, str | bool) else None
    if truth is None:
        return '`label` must be "True" or "False"'
    return TaskEntry((root / images[0], root / images[1]), sentence, truth, idx=position)


def parse_vqa(item: Any, root: Path, position: int) -> TaskEntry | str:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        return "no `image` path"
    if (question := _text(item, "question")) is None:
        return "no `question` (a non-empty string of valid Unicode)"
    answers = item.get("answer", [])
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "`answer` must be a string or a list of strings"
    if any(unicode_problem(a) is not None for a in answers):
        return "an `answer` is not valid Unicode (a lone surrogate)"
    qid = item.get("question_id")
    idx = qid if isinstance(qid, int) and not isinstance(qid, bool) else position
    return TaskEntry((root / item["image"],), question, answers=tuple(normalize_answer(a) for a in answers), idx=idx)


def read_task_files(files: Sequence[Path], image_root: Path, parse: Parse,
                    max_bad_fraction: float = 1.0, bad_log: BadSampleLog | None = None) -> tuple[list[TaskEntry], int]:
    """Entries of ``files`` (paths relative to ``image_root``) and the number of malformed ones skipped
    (each named in ``bad_log``, phase ``annotations``, when given)."""
    entries: list[TaskEntry] = []
    skipped = 0
    for file in files:
        items = read_annotation_list(file, "task")
        bad = []
        for index, item in enumerate(items):
            parsed = parse(item, Path(image_root), len(entries))
            if isinstance(parsed, str):
                bad.append(f"entry {index}: {parsed}")
                if bad_log is not None:
                    bad_log.record(BadSample("annotations", str(file), parsed, index=index), announce=False)
            else:
                entries.append(dataclasses.replace(parsed, source=str(file), index=index))
        if bad:
            skipped += len(bad)
            log.warning("%s: skipped %d of %d entries (%s)", file, len(bad), len(items), "; ".join(bad[:MAX_LOGGED]))
            if len(bad) > max_bad_fraction * len(items):
                raise AnnotationError(f"{file}: {len(bad)} of {len(items)} entries are malformed (limit "
                                      f"data.max_bad_fraction={max_bad_fraction:g}): " + "; ".join(bad[:MAX_LOGGED]))
    return entries, skipped


@dataclass
class TaskSample:
    """One loaded sample: its images ``k × [3, H, W]``, text, entry and access key."""

    images: list[Tensor]
    entry: TaskEntry
    key: int


class TaskDataset(KeyedImageDataset):
    """Task entries with their images: access ``key`` → :class:`TaskSample` (None when an image of the
    entry cannot be read)."""

    @property
    def entries(self) -> list[TaskEntry]:
        return self.items

    def __getitem__(self, key: int) -> TaskSample | None:
        entry = self.items[key % len(self.items)]
        images = self.load(key, entry.images, entry.source or None, entry.index)
        return None if images is None else TaskSample(images, entry, key)


@dataclass
class TaskCollate(PretrainCollate):
    """``list[TaskSample | None]`` → :class:`Batch`: ``images [k·B, 3, H, W]`` (every sample's first
    image, then every second one), text ``[B, L]``, ``idx [B]`` and ``extras["labels"] [B]`` or, with an
    ``answer_index``, ``extras["targets"] [B, C]`` soft VQA scores. Text options as
    :class:`~vlkit.data.collate.PretrainCollate`."""

    answer_index: dict[str, int] | None = None
    answer_tokens: int = 0
    """> 0: also tokenize every sample's distinct answers (at most this many tokens each) for a
    generative answer decoder: ``extras`` ``answer_ids`` / ``answer_mask`` ``[N, La]``,
    ``answer_question [N]`` and ``answer_weights [N]`` (the answer's share of the sample's annotations)."""

    # collates TaskSamples, not a PretrainCollate's Samples (as TextOnlyCollate collates TextSamples): the
    # subclass shares the text settings, and code that checks for a PretrainCollate relies on it
    def __call__(self, samples: list[TaskSample | None]) -> Batch:  # type: ignore[override]
        kept = [s for s in samples if s is not None and not unusable_text(" ".join((s.entry.text, *s.entry.answers)),
                                                                           s.key)]
        if not kept:
            raise DataError(f"no sample of a batch of {len(samples)} could be used (each is named with its reason in "
                            "bad_samples.jsonl); fix the data or filter it (vlkit data filter)")
        per_sample = len(kept[0].images)
        images = stack_images([s.images[j] for j in range(per_sample) for s in kept])
        text = self.tokenize_texts([s.entry.text for s in kept])
        batch = Batch(images=images, input_ids=text.input_ids, attention_mask=text.attention_mask,
                      idx=torch.tensor([s.entry.idx for s in kept]), skipped=len(samples) - len(kept),
                      text_lengths=Batch.lengths_of(text.attention_mask))
        if self.answer_tokens:
            batch.extras.update(self.answer_batch([s.entry.answers for s in kept]))
        elif self.answer_index is None:
            batch.extras["labels"] = torch.tensor([s.entry.label for s in kept])
        else:
            batch.extras["targets"] = torch.from_numpy(
                np.stack([soft_scores(s.entry.answers, self.answer_index) for s in kept]))
        return self.transform(batch, text, [s.key for s in kept])


    def answer_batch(self, answers: Sequence[Sequence[str]]) -> dict[str, Tensor]:
        """The answer tensors of :attr:`answer_tokens` for each sample's annotators' ``answers``."""
        texts, question, weights = [], [], []
        for row, given in enumerate(answers):
            for answer, count in answer_counts(given).items():
                texts.append(answer)
                question.append(row)
                weights.append(count / len(given))
        tokens = tokenize(self.tokenizer, texts, self.answer_tokens) if texts else None
        return {"answer_ids": tokens.input_ids if tokens else torch.zeros(0, 2, dtype=torch.long),
                "answer_mask": tokens.attention_mask if tokens else torch.zeros(0, 2, dtype=torch.long),
                "answer_question": torch.tensor(question, dtype=torch.long),
                "answer_weights": torch.tensor(weights, dtype=torch.float32)}


def answer_counts(answers: Sequence[str]) -> dict[str, int]:
    """Distinct answers (first-given order) and how many annotators gave each."""
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return counts


def soft_scores(answers: Sequence[str], answer_index: dict[str, int]) -> np.ndarray:
    """``[C]`` float32 soft VQA targets: ``min(#annotators who gave the answer / 3, 1)`` per known answer."""
    scores = np.zeros(len(answer_index), dtype=np.float32)
    for answer in set(answers):
        if answer in answer_index:
            scores[answer_index[answer]] = min(sum(a == answer for a in answers) / 3.0, 1.0)
    return scores


def answer_vocabulary(entries: Sequence[TaskEntry], *, min_count: int = 1, max_answers: int | None = None) -> list[str]:
    """Answers given at least ``min_count`` times over ``entries`` (each annotator counts), most frequent
    first (ties alphabetically), at most ``max_answers``."""
    counts: dict[str, int] = {}
    for entry in entries:
        for answer in entry.answers:
            counts[answer] = counts.get(answer, 0) + 1
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:max_answers] if max_answers is not None else ranked
