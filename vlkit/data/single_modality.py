"""Single-modality samples, datasets and collate functions (images without text, text without images):
what the ``image_only`` / ``text_only`` corpora (:mod:`vlkit.data.corpora`) and the single-modality view of an
image-text source train on.

Both index with access keys from :class:`~vlkit.data.json_dataset.EpochSampler` (``key % N`` is the
item, augmentation and masking draw from ``(seed, key)``), so multi-worker loading and resuming are
exact as for image-text pairs. Batches come from :class:`ImageOnlyCollate` (``Batch.images`` only) and
:class:`TextOnlyCollate` (``Batch.input_ids`` / ``attention_mask`` and the objectives' batch
transforms, e.g. MLM masking; ``Batch.images`` is None).

Text files are not loaded into memory: indexing records the byte offset of each usable line (8 bytes
per text) and a sample seeks to it, so corpora of billions of characters are fine. A line longer than
``MAX_LINE_BYTES`` is not read whole: it is skipped as unusable, like a line that is not UTF-8, a bad
JSON line, or a text that is not valid Unicode (a lone surrogate from a JSON ``\ud800`` escape, which
the tokenizer rejects); each is counted and named in the bad-sample file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vlkit.core.batch import Batch
from vlkit.core.errors import DataError
from vlkit.data.bad_samples import BadSample, BadSampleLog
from vlkit.data.collate import PretrainCollate, stack_images, unusable_text
from vlkit.data.json_dataset import AnnotationError, KeyedImageDataset
from vlkit.data.safe_io import file_problem, size_text, unicode_problem

log = logging.getLogger("vlkit.data")

JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")
MAX_LINE_BYTES = 1 << 20
"""Longest line of a text corpus read (1 MiB); longer lines are skipped as unusable."""


@dataclass
class ImageSample:
    """One image-only sample: image ``[3, H, W]``, image id (file index), access key."""

    image: Tensor
    idx: int
    key: int


@dataclass
class TextSample:
    """One text-only sample: the text, its id (line index over all files), access key."""

    text: str
    idx: int
    key: int


# ---------------------------------------------------------------------------------------------- images
class ImageFileDataset(KeyedImageDataset):
    """Images from files: access ``key`` → :class:`ImageSample` (None for an unreadable file)."""

    @property
    def files(self) -> list[Path]:
        return self.items

    def __getitem__(self, key: int) -> ImageSample | None:
        index = key % len(self.items)
        images = self.load(key, [self.items[index]])  # named by its path when unreadable
        return None if images is None else ImageSample(images[0], index, key)


@dataclass
class ImageOnlyCollate:
    """``list[ImageSample | Sample | None]`` → :class:`Batch` with ``images [B, 3, H, W]`` and ``idx [B]``;
    no text (None samples are dropped and counted in ``Batch.skipped``)."""

    def __call__(self, samples: Sequence[Any]) -> Batch:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise DataError(f"no sample of a batch of {len(samples)} could be used (each is named with its reason in "
                            "bad_samples.jsonl); fix the data or filter it (vlkit data filter)")
        return Batch(images=stack_images([s.image for s in kept]), input_ids=None, attention_mask=None,
                     idx=torch.tensor([s.idx for s in kept]), skipped=len(samples) - len(kept))


# ---------------------------------------------------------------------------------------------- text
def _read_line(f: IO[bytes], limit: int = MAX_LINE_BYTES) -> tuple[bytes, int]:
    """The next line of ``f`` if it is at most ``limit`` bytes (else ``b""``: the rest of it is skipped in
    bounded chunks), and the bytes consumed (0 at the end of the file)."""
    line = f.readline(limit + 1)
    if len(line) <= limit or line.endswith(b"\n"):
        return line, len(line)
    consumed = len(line)
    while chunk := f.readline(limit):
        consumed += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"", consumed


def _line_text(line: bytes, json_lines: bool, text_key: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable line, ``(None, reason)`` for an unusable one, ``(None, None)`` for a
    blank one."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if not decoded.strip():
        return None, None
    if json_lines:
        try:
            value = json.loads(decoded)
        except json.JSONDecodeError:
            return None, "not a JSON line"
        text = value.get(text_key) if isinstance(value, dict) else None
        if not isinstance(text, str) or not text.strip():
            return None, f"no `{text_key}` string"
        decoded = text
    if (problem := unicode_problem(decoded)) is not None:
        return None, f"the text is {problem}"
    return decoded.strip(), None


def _text_of_line(line: bytes, json_lines: bool, text_key: str) -> str | None:
    """The text of one line, or None when it has none (blank, undecodable, a bad JSON line, or not valid
    Unicode)."""
    return _line_text(line, json_lines, text_key)[0]


@dataclass
class TextFileIndex:
    """Byte offsets of the usable lines of one file (blank lines are skipped silently; lines that are too
    long, not UTF-8, bad JSON lines and lines without a usable text are counted in ``bad`` and, with a
    bad-sample log, named with their 0-based line number)."""

    path: Path
    json_lines: bool
    offsets: np.ndarray
    bad: int
    lines: int

    @classmethod
    def build(cls, path: Path, text_key: str = "text", bad_log: BadSampleLog | None = None,
              max_line_bytes: int = MAX_LINE_BYTES) -> TextFileIndex:
        if (problem := file_problem(path)) is not None:
            raise AnnotationError(f"{path}: cannot read texts: {problem}")
        json_lines = path.suffix.lower() in JSON_LINES_SUFFIXES
        offsets: list[int] = []
        bad = lines = 0
        position = 0
        number = 0
        with open(path, "rb") as f:
            while True:
                line, consumed = _read_line(f, max_line_bytes)
                if not consumed:
                    break
                reason: str | None
                if not line:
                    text, reason = None, f"a line longer than {size_text(max_line_bytes)}"
                else:
                    text, reason = _line_text(line, json_lines, text_key)
                if text is not None or reason is not None:
                    lines += 1
                    if text is not None:
                        offsets.append(position)
                    else:
                        bad += 1
                        if bad_log is not None:
                            bad_log.record(BadSample("annotations", str(path), reason or "unusable", index=number),
                                           announce=False)
                position += consumed
                number += 1
        return cls(path, json_lines, np.asarray(offsets, dtype=np.int64), bad, lines)


class TextCorpus(Dataset):
    """Texts from line-oriented files; index with an access key (item ``key % N``).

    Args:
        files: ``.txt`` (one text per non-blank line) or JSON-lines files (``text_key`` per line).
        text_key: the text field of JSON lines.
        max_bad_fraction: a file with more unusable non-blank lines than this fraction is an
            :class:`AnnotationError` (most likely the wrong format or ``text_key``), raised while indexing.
        bad: where unusable lines are named (phase ``annotations``, ``index`` the 0-based line number).
    """

    def __init__(self, files: Sequence[str | Path], text_key: str = "text", max_bad_fraction: float = 1.0,
                 bad: BadSampleLog | None = None) -> None:
        self.text_key = text_key
        self.indexes: list[TextFileIndex] = []
        for file in files:
            index = TextFileIndex.build(Path(file), text_key, bad)
            if index.bad:
                named = bad.where() if bad is not None else ""
                log.warning("%s: skipped %d of %d lines without a usable text%s", file, index.bad, index.lines,
                            named)
                if index.bad > max_bad_fraction * index.lines:
                    what = f'JSON lines with a "{text_key}" string' if index.json_lines else "UTF-8 text lines"
                    raise AnnotationError(f"{file}: {index.bad} of {index.lines} lines are unusable (limit "
                                          f"data.max_bad_fraction={max_bad_fraction:g}); expected {what}")
            self.indexes.append(index)
        self.skipped = sum(i.bad for i in self.indexes)
        self.starts = np.cumsum([0, *(len(i.offsets) for i in self.indexes)])
        self._handles: dict[int, IO[bytes]] = {}
        self._pid = -1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _handle(self, file: int) -> IO[bytes]:
        if self._pid != os.getpid():  # a forked loader worker opens its own files
            self._handles, self._pid = {}, os.getpid()
        if file not in self._handles:
            self._handles[file] = open(self.indexes[file].path, "rb")  # noqa: SIM115 - kept open for reuse
        return self._handles[file]

    def text(self, item: int) -> str:
        """The text of item ``item`` (``0 ≤ item < len(self)``)."""
        file = int(np.searchsorted(self.starts, item, side="right")) - 1
        index = self.indexes[file]
        handle = self._handle(file)
        handle.seek(int(index.offsets[item - self.starts[file]]))
        text = _text_of_line(handle.readline(MAX_LINE_BYTES + 1), index.json_lines, self.text_key)
        if text is None:
            raise AnnotationError(f"{index.path} changed after it was indexed")
        return text

    def __getitem__(self, key: int) -> TextSample:
        item = key % len(self)
        return TextSample(self.text(item), item, key)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}, "_pid": -1}


class TextListDataset(Dataset):
    """Texts held in memory (e.g. the captions of an image-text split trained as text only); access
    ``key`` → :class:`TextSample` of item ``key % N``."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, key: int) -> TextSample:
        item = key % len(self.texts)
        return TextSample(self.texts[item], item, key)


@dataclass
class TextOnlyCollate(PretrainCollate):
    """``list[TextSample]`` → :class:`Batch` with ``input_ids`` / ``attention_mask [B, L]``, ``idx [B]`` and
    whatever the batch transforms add (e.g. MLM masking); ``images`` is None. Same options as
    :class:`~vlkit.data.collate.PretrainCollate`."""

    def __call__(self, samples: Sequence[TextSample]) -> Batch:  # type: ignore[override]
        kept = [s for s in samples if not unusable_text(s.text, s.key)]
        if not kept:
            raise RuntimeError(f"every text of a batch of {len(samples)} is unusable")
        text = self.tokenize_texts([s.text for s in kept])
        batch = Batch(images=None, input_ids=text.input_ids, attention_mask=text.attention_mask,
                      idx=torch.tensor([s.idx for s in kept]), skipped=len(samples) - len(kept),
                      text_lengths=Batch.lengths_of(text.attention_mask))
        return self.transform(batch, text, [s.key for s in kept])
