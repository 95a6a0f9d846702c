"""ALBEF-style JSON annotations: ``[{"image": path, "caption": str | [str, ...], ...}, ...]``.

:class:`PairDataset` serves pre-training samples (one caption drawn per access); :class:`Gallery`
holds a retrieval split (every image, every caption, and which caption belongs to which image).
Randomness is derived from ``(seed, key)`` of each access, so a sample is the same whatever worker
loads it and whether or not the run was resumed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger("vlkit.data")


class AnnotationError(ValueError):
    """An annotation file that cannot be used at all (not JSON, not a list)."""


@dataclass(frozen=True)
class Entry:
    """One annotated image: path (absolute), captions, image id (``idx``) and an optional ``group``
    (entries sharing one, e.g. an image and its compositional twin, can be batched together)."""

    image: Path
    captions: tuple[str, ...]
    idx: int
    group: int | str | None = None


def read_entries(files: Sequence[str | Path], image_root: str | Path) -> tuple[list[Entry], int]:
    """Entries of every file, with paths resolved against ``image_root``.

    Malformed entries (no image, no caption) are skipped and counted, not fatal. ``idx`` is the
    entry's ``image_id`` when present, else its position in the combined list; ``group`` is the
    entry's optional ``group`` (an int or a string).

    Returns:
        the entries and the number skipped.
    """
    entries: list[Entry] = []
    skipped = 0
    root = Path(image_root)
    for file in files:
        try:
            items = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise AnnotationError(f"{file}: cannot read annotations: {err}") from None
        if not isinstance(items, list):
            raise AnnotationError(f"{file}: expected a JSON list of {{image, caption}} entries")
        for item in items:
            captions = item.get("caption") if isinstance(item, dict) else None
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not captions \
                    or not all(isinstance(c, str) and c.strip() for c in captions):
                skipped += 1
                continue
            idx = item.get("image_id")
            idx = idx if isinstance(idx, int) else len(entries)
            group = item.get("group")
            group = group if isinstance(group, (int, str)) and not isinstance(group, bool) else None
            entries.append(Entry(root / item["image"], tuple(captions), idx, group))
    if skipped:
        log.warning("skipped %d malformed annotation entries in %s", skipped, ", ".join(map(str, files)))
    return entries, skipped


def load_image(path: Path, draft_size: int | None = None) -> Image.Image | None:
    """The image as RGB, or None when it is missing or corrupt.

    Args:
        draft_size: for JPEGs, decode at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay
            ≥ ``draft_size`` (``Image.draft``; much faster for large photos); None: full size.
    """
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass
class Sample:
    """One pre-training sample: image ``[3, H, W]``, caption, image id, access key."""

    image: Tensor
    caption: str
    idx: int
    key: int


def sample_seed(seed: int, key: int) -> int:
    """A 63-bit seed for access ``key`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class PairDataset(Dataset):
    """Image-caption pairs for pre-training; index with an access *key* (see :class:`EpochSampler`).

    Args:
        entries: annotated images.
        transform: PIL image → ``[3, H, W]`` tensor (may be random).
        seed: run seed; caption choice and augmentation draw from ``(seed, key)``.
        draft_size: decode JPEGs reduced while their sides stay ≥ this (see :func:`load_image`).
    """

    def __init__(self, entries: list[Entry], transform: Callable[[Image.Image], Tensor], seed: int = 0,
                 draft_size: int | None = None) -> None:
        self.entries = entries
        self.transform = transform
        self.seed = seed
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int) -> Sample | None:
        entry = self.entries[key % len(self.entries)]
        image = load_image(entry.image, self.draft_size)
        if image is None:
            return None  # counted and reported by the collate function
        seed = sample_seed(self.seed, key)
        rng = np.random.default_rng(seed)
        caption = entry.captions[int(rng.integers(len(entry.captions)))]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = self.transform(image)
        return Sample(pixels, caption, entry.idx, key)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Access keys ``epoch · N + i`` in a seeded permutation per epoch, endless, resumable.

    With ``groups``, the permutation shuffles groups and keeps each group's members next to each
    other, so they usually land in one batch (a group straddles a batch boundary only when the
    boundary falls inside it). Batching an image with its compositional twin makes each the other's
    in-batch hard negative: contrastive and matching losses then have to bind attributes to objects.

    Args:
        size: dataset length ``N``.
        seed: run seed.
        start: number of keys already consumed (resume point).
        groups: optional ``[N]`` group label of each item (None: every item is its own group).
    """

    def __init__(self, size: int, seed: int, start: int = 0, groups: Sequence[Hashable | None] | None = None) -> None:
        if groups is not None and len(groups) != size:
            raise ValueError(f"{len(groups)} group labels for {size} items")
        self.size = size
        self.seed = seed
        self.start = start
        self.members = _group_members(groups) if groups is not None else None

    def order(self, epoch: int) -> np.ndarray:
        """``[N]`` item order of ``epoch`` (a permutation of ``0..N-1``)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.members is None:
            return rng.permutation(self.size)
        return np.concatenate([self.members[g] for g in rng.permutation(len(self.members))])

    def __iter__(self):  # noqa: ANN204 - iterator of ints
        position = self.start
        while True:
            epoch, offset = divmod(position, self.size)
            for i in self.order(epoch)[offset:]:
                yield epoch * self.size + int(i)
            position = (epoch + 1) * self.size

    def __len__(self) -> int:
        return 2**62


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
        texts, txt2img, img2txt = [], [], []
        for i, entry in enumerate(entries):
            img2txt.append(list(range(len(texts), len(texts) + len(entry.captions))))
            texts.extend(entry.captions)
            txt2img.extend([i] * len(entry.captions))
        return cls([e.image for e in entries], texts, txt2img, img2txt, [e.idx for e in entries])


class ImageFolderList(Dataset):
    """Images of a gallery for evaluation: ``i`` → ``[3, H, W]`` (a corrupt image is an error here:
    an evaluation split must be complete)."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], Tensor]) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        image = load_image(self.paths[i])
        if image is None:
            raise AnnotationError(f"evaluation image {self.paths[i]} is missing or corrupt")
        return self.transform(image)


def read_json(path: str | Path) -> Any:
    """A JSON file's content (UTF-8)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
