"""ALBEF-style JSON annotations: ``[{"image": path, "caption": str | [str, ...], ...}, ...]``.

:class:`PairDataset` serves pre-training samples (one caption drawn per access); :class:`Gallery`
holds a retrieval split (every image, every caption, and which caption belongs to which image).
Randomness is derived from ``(seed, key)`` of each access, so a sample is the same whatever worker
loads it and whether or not the run was resumed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vlkit.core.errors import UserError
from vlkit.data.bad_samples import BadSample, BadSampleLog
from vlkit.data.hard_negatives import hard_negatives_problem, read_hard_negatives
from vlkit.data.phrases import PhraseBox, phrases_problem, read_phrases
from vlkit.data.safe_io import (
    MAX_ANNOTATION_BYTES,
    MAX_IMAGE_BYTES,
    Unusable,
    decode_image,
    read_json_bounded,
    unicode_problem,
)

log = logging.getLogger("vlkit.data")


class AnnotationError(UserError, ValueError):
    """An annotation file that cannot be used at all (not JSON, not a list, not a regular file, beyond the
    size limit, too many malformed entries)."""


@dataclass(frozen=True)
class Entry:
    """One annotated image: path (absolute), captions, image id (``idx``), an optional ``group``
    (entries sharing one, e.g. an image and its compositional twin, can be batched together) and
    optional grounded ``phrases`` per caption (boxes in pixels; see :mod:`vlkit.data.phrases`) and optional
    ``hard_negatives`` per caption (captions false for the image; see :mod:`vlkit.data.hard_negatives`);
    ``source`` and ``index``: the annotation file and the entry's position in it (for naming it when its
    image turns out unreadable)."""

    image: Path
    captions: tuple[str, ...]
    idx: int
    group: int | str | None = None
    phrases: tuple[tuple[PhraseBox, ...], ...] | None = None
    hard_negatives: tuple[tuple[str, ...], ...] | None = None
    source: str = ""
    index: int | None = None


@dataclass(frozen=True)
class AnnotationPart:
    """One annotation file of a split: where its image paths are relative to and how often an epoch
    draws its entries (``ratio`` 2: every entry twice; 0.5: a random half, drawn anew each epoch)."""

    file: Path
    image_root: Path
    ratio: float = 1.0


@dataclass
class EntryList:
    """Entries read from a split's annotation parts.

    Attributes:
        entries: usable entries, in file order.
        part_of: ``[len(entries)]`` index of the part each entry came from.
        ratios: per part, its sampling ratio.
        skipped: malformed entries skipped (all parts).
    """

    entries: list[Entry]
    part_of: list[int]
    ratios: list[float]
    skipped: int


MAX_LOGGED = 5  # malformed entries / unreadable images named in the log, per file or process


def entry_problem(item: Any) -> str | None:
    """Why an annotation item is unusable, or None."""
    if not isinstance(item, dict):
        return f"not a mapping but {type(item).__name__}"
    if not isinstance(item.get("image"), str) or not item["image"]:
        return "no `image` path"
    captions = item.get("caption")
    captions = [captions] if isinstance(captions, str) else captions
    if not isinstance(captions, list) or not captions:
        return "no `caption` (a string or a list of strings)"
    if not all(isinstance(c, str) and c.strip() for c in captions):
        return "an empty or non-string caption"
    for i, caption in enumerate(captions):
        if (problem := unicode_problem(caption)) is not None:
            return f"caption {i} is {problem}"
    problem = phrases_problem(item, captions) or hard_negatives_problem(item, captions)
    if problem is None and isinstance(negatives := item.get("hard_negatives"), list):
        for per_caption in negatives:
            for negative in per_caption:
                if (unicode := unicode_problem(negative)) is not None:
                    return f"a hard-negative caption is {unicode}"
    if problem is None and (unicode := unicode_problem(item["image"])) is not None:
        return f"the `image` path is {unicode}"
    return problem


def read_annotation_list(path: str | Path, entries: str, max_bytes: int = MAX_ANNOTATION_BYTES) -> list[Any]:
    """A JSON annotation file that must hold a list; an :class:`AnnotationError` naming the file if it
    cannot be read or parsed (missing, not a regular file, more than ``max_bytes``, not UTF-8 JSON), or
    holds something else (``entries`` describes the expected items)."""
    try:
        items = read_json_bounded(path, max_bytes)
    except Unusable as err:
        raise AnnotationError(f"{path}: cannot read annotations: {err}") from None
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of {entries} entries")
    return items


def read_parts(parts: Sequence[AnnotationPart], *, max_bad_fraction: float = 1.0,
               bad: BadSampleLog | None = None) -> EntryList:
    """Entries of every part, image paths resolved against each part's ``image_root``.

    Malformed entries (see :func:`entry_problem`) are skipped, counted, the first few named with file
    and index in the log and every one in ``bad`` (phase ``annotations``). A file whose malformed
    fraction exceeds ``max_bad_fraction`` — most likely a different schema — is an
    :class:`AnnotationError` naming the file and the first bad entries, raised before anything is
    trained. ``idx`` is the entry's ``image_id`` when present, else
    its position in the combined list; ``group`` its optional ``group`` (an int or a string).
    """
    entries: list[Entry] = []
    part_of: list[int] = []
    skipped = 0
    for p, part in enumerate(parts):
        items = read_annotation_list(part.file, "{image, caption}")
        problems: list[str] = []
        for index, item in enumerate(items):
            problem = entry_problem(item)
            if problem is not None:
                problems.append(f"entry {index}: {problem}")
                if bad is not None:
                    image = item.get("image") if isinstance(item, dict) else None
                    bad.record(BadSample("annotations", str(part.file), problem, index=index,
                                         image=image if isinstance(image, str) else None), announce=False)
                continue
            captions = [item["caption"]] if isinstance(item["caption"], str) else item["caption"]
            idx = item.get("image_id")
            idx = idx if isinstance(idx, int) and not isinstance(idx, bool) else len(entries)
            group = item.get("group")
            group = group if isinstance(group, (int, str)) and not isinstance(group, bool) else None
            entries.append(Entry(Path(part.image_root) / item["image"], tuple(captions), idx, group,
                                 read_phrases(item), read_hard_negatives(item), str(part.file), index))
            part_of.append(p)
        if problems:
            skipped += len(problems)
            named = bad.where() if bad is not None else ""
            log.warning("%s: skipped %d of %d annotation entries (%s%s)%s", part.file, len(problems), len(items),
                        "; ".join(problems[:MAX_LOGGED]), "; ..." if len(problems) > MAX_LOGGED else "", named)
            if len(problems) > max_bad_fraction * len(items):
                raise AnnotationError(
                    f"{part.file}: {len(problems)} of {len(items)} entries are malformed (limit "
                    f"data.max_bad_fraction={max_bad_fraction:g}); expected ALBEF-style "
                    f'{{"image": path, "caption": str | [str, ...]}}: ' + "; ".join(problems[:MAX_LOGGED]))
    return EntryList(entries, part_of, [part.ratio for part in parts], skipped)


def read_entries(files: Sequence[str | Path], image_root: str | Path, max_bad_fraction: float = 1.0,
                 bad: BadSampleLog | None = None) -> tuple[list[Entry], int]:
    """Entries of ``files`` (all relative to ``image_root``) and the number skipped; see :func:`read_parts`."""
    result = read_parts([AnnotationPart(Path(f), Path(image_root)) for f in files], max_bad_fraction=max_bad_fraction,
                        bad=bad)
    return result.entries, result.skipped


def load_image(source: Path | bytes, draft_size: int | None = None,
               max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image | None:
    """An image file (or its encoded bytes, e.g. a tar member) as RGB, or None when it cannot be used:
    missing, not a regular file (a FIFO, device or directory is not opened), more than ``max_bytes``,
    more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, or undecodable (:func:`vlkit.data.safe_io.decode_image`
    says why).

    Args:
        draft_size: for JPEGs, decode at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay
            ≥ ``draft_size`` (``Image.draft``; much faster for large photos); None: full size.
    """
    try:
        return decode_image(source, draft_size, max_bytes)
    except Unusable:
        return None


@dataclass
class Sample:
    """One pre-training sample: image ``[3, H, W]``, caption, image id, access key, and the caption's
    grounded phrases (boxes as fractions of the image side; empty when the entry has none) and its
    annotated hard-negative captions (empty when it has none)."""

    image: Tensor
    caption: str
    idx: int
    key: int
    phrases: tuple[PhraseBox, ...] = ()
    hard_negatives: tuple[str, ...] = ()


def sample_seed(seed: int, key: int) -> int:
    """A 63-bit seed for access ``key`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seeded_transform(transform: Callable[[Image.Image], Tensor], images: Sequence[Image.Image],
                     seed: int) -> list[Tensor]:
    """``transform`` applied to each image with torch's global RNG seeded ``seed`` for the duration
    (so a random augmentation depends on the access key alone, not on the worker or the order). Only
    the CPU generator: ``torch.manual_seed`` also reseeds the GPU's (its dropout stream, with in-process
    loading) and, on a CUDA build without a GPU, queues a lazy call with a stack trace (0.6 ms/sample)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return [transform(image) for image in images]


class KeyedImageDataset(Dataset):
    """Base of training datasets indexed by access key (see :class:`EpochSampler`): item ``key % N``,
    its images decoded (``Image.draft`` above ``draft_size``) and transformed with the randomness of
    ``(seed, key)``. A sample with an unreadable image yields None: logged (the first few per process),
    named in :attr:`bad` (once), counted in :attr:`failures` (every time), dropped and counted by the
    collate function.

    Args:
        items: the dataset's items (subclasses say what they are).
        transform: PIL image → ``[3, H, W]`` tensor (may be random).
        seed: run seed.
        draft_size: decode JPEGs reduced while their sides stay ≥ this (see :func:`load_image`).
        bad: where skipped samples are named (default: the log only).
        max_image_bytes: the largest image file read.
    """

    def __init__(self, items: Sequence[Any], transform: Callable[[Image.Image], Tensor], seed: int = 0,
                 draft_size: int | None = None, bad: BadSampleLog | None = None,
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.items = list(items)
        self.transform = transform
        self.seed = seed
        self.draft_size = draft_size
        self.bad = bad if bad is not None else BadSampleLog()
        self.max_image_bytes = max_image_bytes
        self.failures = 0

    def __len__(self) -> int:
        return len(self.items)

    def load(self, key: int, paths: Sequence[Path], source: str | None = None,
             index: int | None = None) -> list[Tensor] | None:
        """The transformed images at ``paths`` for access ``key``, or None when one cannot be read (named
        in :attr:`bad` as entry ``index`` of ``source``, else by its image path)."""
        loaded = self.load_sized(key, paths, source, index)
        return None if loaded is None else loaded[0]

    def load_sized(self, key: int, paths: Sequence[Path], source: str | None = None,
                   index: int | None = None) -> tuple[list[Tensor], list[tuple[int, int]]] | None:
        """Like :meth:`load`, with each file's stored ``(width, height)`` in pixels."""
        readable: list[Image.Image] = []
        for path in paths:
            try:
                readable.append(decode_image(path, self.draft_size, self.max_image_bytes))
            except Unusable as err:
                self.skip(path, str(err), source, index)
                return None
        sizes = [p.info.get("stored_size", p.size) for p in readable]
        return seeded_transform(self.transform, readable, sample_seed(self.seed, key)), sizes

    def skip(self, path: Path, reason: str, source: str | None, index: int | None) -> None:
        """Count, log (the first few per process) and name a sample whose image at ``path`` is unusable."""
        self.failures += 1
        named = self.bad.record(BadSample("image", source or str(path), reason, index=index, image=str(path)),
                                announce=False)
        if named and self.failures <= MAX_LOGGED:  # per process: each loader worker names its first few
            log.warning("cannot read image %s (%s); sample skipped%s", path, reason,
                        self.bad.where() if self.failures == 1 else "")


class PairDataset(KeyedImageDataset):
    """Image-caption pairs for pre-training: ``key`` → :class:`Sample` (caption drawn from ``(seed, key)``)."""

    def __init__(self, entries: list[Entry], transform: Callable[[Image.Image], Tensor], seed: int = 0,
                 draft_size: int | None = None, bad: BadSampleLog | None = None,
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        super().__init__(entries, transform, seed, draft_size, bad, max_image_bytes)

    @property
    def entries(self) -> list[Entry]:
        return self.items

    def __getitem__(self, key: int) -> Sample | None:
        entry = self.items[key % len(self.items)]
        loaded = self.load_sized(key, [entry.image], entry.source or None, entry.index)
        if loaded is None:
            return None  # counted by the collate function, reported by the trainer
        (image,), ((width, height),) = loaded
        rng = np.random.default_rng(sample_seed(self.seed, key))
        which = int(rng.integers(len(entry.captions)))
        phrases = () if entry.phrases is None else tuple(p.normalized(width, height) for p in entry.phrases[which])
        negatives = () if entry.hard_negatives is None else entry.hard_negatives[which]
        return Sample(image, entry.captions[which], entry.idx, key, phrases, negatives)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Access keys in a seeded permutation per epoch, endless, resumable. ``key % N`` is the item.

    Plain: epoch ``e`` yields keys ``e · N + i`` for a permutation of the items ``i``.

    With ``groups``, the permutation shuffles groups and keeps each group's members next to each
    other, so they usually land in one batch (a group straddles a batch boundary only when the
    boundary falls inside it). Batching an image with its compositional twin makes each the other's
    in-batch hard negative: contrastive and matching losses then have to bind attributes to objects.

    With ``parts`` and ``ratios`` (per-source sampling ratios), each epoch takes every item of part
    ``p`` ``floor(r_p)`` times plus a random ``round(frac(r_p) · n_p)`` of them (drawn anew each
    epoch), all shuffled together; the epoch length is constant, so resuming stays exact. Copy ``c``
    of item ``i`` in epoch ``e`` has key ``(e · C + c) · N + i`` (``C`` = the largest ``ceil(r_p)``),
    so every access has its own key (own caption draw and augmentation).

    The epochs, concatenated, form one endless **global stream** of keys. With ``world_size`` > 1,
    each micro-batch of the global batch is ``world_size · block`` consecutive keys of the stream,
    rank ``r`` taking the ``r``-th block of ``block`` keys: the ranks' micro-batches are disjoint and
    together are exactly the micro-batch one process with a ``world_size`` times larger batch would
    read (in the same order, rank 0's rows first). Nothing is dropped at epoch ends, and a run
    resumes at any world size from the global position alone.

    Args:
        size: dataset length ``N``.
        seed: run seed.
        start: position in the global stream to continue from (keys consumed by all ranks so far).
        groups: optional ``[N]`` group label of each item (None: every item is its own group).
        parts: optional ``[N]`` part (annotation file) index of each item.
        ratios: per part, its sampling ratio (≥ 0); needs ``parts``.
        rank, world_size: this process's place among the training processes.
        block: keys per rank per micro-batch (the per-rank micro-batch size; needed when
            ``world_size`` > 1).
    """

    def __init__(self, size: int, seed: int, start: int = 0, groups: Sequence[Hashable | None] | None = None,
                 parts: Sequence[int] | None = None, ratios: Sequence[float] | None = None, *,
                 rank: int = 0, world_size: int = 1, block: int = 1) -> None:
        if groups is not None and len(groups) != size:
            raise ValueError(f"{len(groups)} group labels for {size} items")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if block < 1:
            raise ValueError(f"block must be ≥ 1, got {block}")
        self.rank = rank
        self.world_size = world_size
        self.block = block
        self.size = size
        self.seed = seed
        self.start = start
        self.members = _group_members(groups) if groups is not None else None
        self.mix: list[tuple[np.ndarray, float]] | None = None
        self.copies = 1
        self.epoch_length = size
        if ratios is not None and any(r != 1.0 for r in ratios):
            if parts is None or len(parts) != size:
                raise ValueError("sampling ratios need the part index of every item")
            if groups is not None:
                raise ValueError("sampling ratios and group batching cannot be combined")
            if any(r < 0 for r in ratios):
                raise ValueError(f"sampling ratios must be ≥ 0, got {list(ratios)}")
            index = np.asarray(parts, dtype=np.int64)
            self.mix = [(np.nonzero(index == p)[0], float(r)) for p, r in enumerate(ratios)]
            self.copies = max(1, *(math.ceil(r) for r in ratios))
            self.epoch_length = epoch_length([len(m) for m, _ in self.mix], [r for _, r in self.mix])
            if self.epoch_length == 0:
                raise ValueError("the sampling ratios leave no sample in an epoch")
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """``[N]`` item order of ``epoch`` (a permutation of ``0..N-1``; plain and grouped modes)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.members is None:
            return rng.permutation(self.size)
        return np.concatenate([self.members[g] for g in rng.permutation(len(self.members))])

    def epoch_keys(self, epoch: int) -> np.ndarray:
        """``[epoch_length]`` access keys of ``epoch``, in order."""
        if self.mix is None:
            return epoch * self.size + self.order(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        keys = []
        for members, ratio in self.mix:
            whole = math.floor(ratio)
            for copy in range(whole):
                keys.append((epoch * self.copies + copy) * self.size + members)
            extra = round((ratio - whole) * len(members))
            if extra:
                chosen = rng.choice(members, size=extra, replace=False)
                keys.append((epoch * self.copies + whole) * self.size + chosen)
        all_keys = np.concatenate(keys)
        return all_keys[rng.permutation(len(all_keys))]

    def stream_keys(self, start: int, count: int) -> np.ndarray:
        """``[count]`` keys of the global stream from position ``start``."""
        out = []
        while count > 0:
            epoch, offset = divmod(start, self.epoch_length)
            if self._cached is None or self._cached[0] != epoch:
                self._cached = (epoch, self.epoch_keys(epoch))
            taken = self._cached[1][offset:offset + count]
            out.append(taken)
            start, count = start + len(taken), count - len(taken)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def __iter__(self):  # noqa: ANN204 - iterator of ints
        if self.world_size == 1:  # the stream itself, an epoch at a time
            position = self.start
            while True:
                epoch, offset = divmod(position, self.epoch_length)
                yield from (int(k) for k in self.epoch_keys(epoch)[offset:])
                position = (epoch + 1) * self.epoch_length
        position = self.start + self.rank * self.block
        while True:
            yield from (int(k) for k in self.stream_keys(position, self.block))
            position += self.world_size * self.block

    def __len__(self) -> int:
        return 2**62


def epoch_length(part_sizes: Sequence[int], ratios: Sequence[float]) -> int:
    """Samples in one epoch of :class:`EpochSampler` over parts of ``part_sizes`` items drawn at ``ratios``:
    ``floor(r) · n + round(frac(r) · n)`` per part."""
    return sum(math.floor(r) * n + round((r - math.floor(r)) * n) for n, r in zip(part_sizes, ratios, strict=True))


def _group_members(groups: Sequence[Hashable | None]) -> list[np.ndarray]:
    """Item indices of each group, in order of first appearance (unlabelled items: singletons)."""
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(("item", i) if g is None else ("group", g), []).append(i)
    return [np.asarray(m, dtype=np.int64) for m in members.values()]


@dataclass
class Gallery:
    """A retrieval split.

    Attributes:
        images: image paths, one per gallery image.
        texts: every caption.
        txt2img: ``[n_texts]`` index of each caption's image.
        img2txt: per image, the indices of its captions.
        idx: ``[n_images]`` image ids.
    """

    images: list[Path]
    texts: list[str]
    txt2img: list[int]
    img2txt: list[list[int]]
    idx: list[int]

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> Gallery:
        texts: list[str] = []
        txt2img: list[int] = []
        img2txt: list[list[int]] = []
        for i, entry in enumerate(entries):
            img2txt.append(list(range(len(texts), len(texts) + len(entry.captions))))
            texts.extend(entry.captions)
            txt2img.extend([i] * len(entry.captions))
        return cls([e.image for e in entries], texts, txt2img, img2txt, [e.idx for e in entries])


class ImageFolderList(Dataset):
    """Images of a gallery for evaluation: ``i`` → ``[3, H, W]`` (an unusable image is an error here,
    naming the file and the reason: an evaluation split must be complete)."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], Tensor],
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.paths = paths
        self.transform = transform
        self.max_image_bytes = max_image_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        try:
            image = decode_image(self.paths[i], max_bytes=self.max_image_bytes)
        except Unusable as err:
            raise AnnotationError(f"evaluation image {self.paths[i]} cannot be used: {err}") from None
        return self.transform(image)


def read_json(path: str | Path, max_bytes: int = MAX_ANNOTATION_BYTES) -> Any:
    """A JSON file's content (UTF-8; a regular file of at most ``max_bytes``), or an :class:`AnnotationError`."""
    try:
        return read_json_bounded(path, max_bytes)
    except Unusable as err:
        raise AnnotationError(f"{path}: cannot read: {err}") from None
