"""Tar shards in the webdataset layout (as img2dataset writes them) as a pre-training stream.

A shard is a tar file whose members are grouped by key: ``{key}.jpg|jpeg|png|webp`` holds the image
and ``{key}.txt`` (a caption) or ``{key}.json`` (a mapping whose ``caption_key`` field is a caption or
a list of captions) its text. :func:`vlkit.data.tools.pack.pack_json_dataset` writes such shards from
ALBEF-style JSON.

:class:`WebDatasetSource` (registry ``dataset``/``webdataset``) streams training samples through
:meth:`WebDatasetSource.stream`; evaluation splits stay ALBEF JSON (``eval_splits``), so retrieval
evaluation works as with ``json_pairs``.

Epochs: one iteration over the stream is one epoch of at most ``epoch_samples`` samples, divided
over all ranks and data-loader workers. With ``resampled`` (the default, as for multi-node
pre-training) shards are drawn with replacement, endlessly, so every epoch is exactly that long;
without it each epoch is one pass over the shards and also ends when a rank's or worker's share of
the shards runs out.

Bad data: a sample whose image cannot be used (missing member, over ``max_member_bytes``, more pixels
than ``PIL.Image.MAX_IMAGE_PIXELS``, undecodable) or whose text cannot (no caption, not UTF-8, not valid
Unicode) is skipped, counted and named in the bad-sample file (phases ``image`` / ``caption``). Shards
are read by :class:`~vlkit.data.tar_reader.TarShardReader`, which reads on past a corrupt header and
notices a truncated shard: the damage is counted and named (phase ``shard``) with the samples known
lost — exactly when the shard's expected sample count is known (img2dataset's ``{shard}_stats.json``
``successes``, or ``pack_report.json``'s ``shard_samples`` beside shards written by ``vlkit data
pack``), else as unknown.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import get_worker_info

from vlkit.core.errors import DataError, MissingDataError, UserError
from vlkit.data.bad_samples import BadSample, BadSampleLog
from vlkit.data.json_dataset import Sample, sample_seed, seeded_transform
from vlkit.data.safe_io import (
    MAX_IMAGE_BYTES,
    MAX_SIDECAR_BYTES,
    Unusable,
    decode_image,
    file_problem,
    read_json_bounded,
    unicode_problem,
)
from vlkit.data.sources import DataSource
from vlkit.data.tar_reader import TarShardReader
from vlkit.data.training_set import EpochStream, TrainingRequest, TrainingSet
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError

log = logging.getLogger("vlkit.data")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Tar member extensions read as the sample's image (the first present wins)."""

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # http://, s3://, pipe:, ... (not a drive letter)


@dataclass(kw_only=True)
class WebDatasetConfig(ComponentConfig):
    """Image-text tar shards (img2dataset / webdataset layout) for pre-training.

    Attributes:
        shards: shard paths or URLs; each may be a brace pattern (``data/{00000..00009}.tar``).
            Relative paths are relative to the working directory; ``http://``, ``pipe:`` etc. are
            opened by webdataset.
        epoch_samples: samples per epoch over all ranks and workers (the stream's length).
        shuffle_buffer: samples in each worker's shuffle buffer; 0 keeps shard order and tar order.
        resampled: draw shards with replacement, endlessly (each rank and worker its own draw).
        caption_key: field of a ``.json`` member holding the caption (a string or a list of strings).
        eval_splits: split name → ALBEF-style annotation files for evaluation.
        eval_image_root: folder the ``image`` paths of ``eval_splits`` are relative to.
    """

    shards: list[str]
    epoch_samples: int
    shuffle_buffer: int = 1000
    resampled: bool = True
    caption_key: str = "caption"
    eval_splits: dict[str, list[str]] = field(default_factory=dict)
    eval_image_root: str = "."

    def __post_init__(self) -> None:
        if not self.shards or not all(isinstance(s, str) and s.strip() for s in self.shards):
            raise ConfigError("name at least one shard file or pattern, e.g. [data/{00000..00009}.tar]",
                              key="shards")
        if self.epoch_samples <= 0:
            raise ConfigError(f"must be a positive sample count, got {self.epoch_samples}", key="epoch_samples")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"must be ≥ 0 (0: no shuffling), got {self.shuffle_buffer}", key="shuffle_buffer")
        if not self.caption_key:
            raise ConfigError("must name the caption field of the .json members", key="caption_key")


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Every shard ``patterns`` name, brace patterns expanded, in order."""
    return [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]


def local_path(url: str) -> Path | None:
    """The file a shard ``url`` names on this machine, or None for a remote one (``http://``, ``pipe:``)."""
    return None if _REMOTE.match(url) else Path(url)


def key_id(key: str) -> int:
    """A stable non-negative 63-bit id of a sample key (the same in every process, worker and run)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def image_member(raw: dict[str, Any]) -> bytes | None:
    """The bytes of a tar sample's image member, or None when it has none."""
    for ext in IMAGE_EXTENSIONS:
        if isinstance(raw.get(ext), bytes):
            return raw[ext]
    return None


def sample_captions(raw: dict[str, Any], caption_key: str = "caption") -> list[str] | str:
    """The usable (non-empty string) captions of a tar sample — ``json[caption_key]`` when the ``.json``
    member has that field, else the ``.txt`` member — or why there is none: no text member, a member
    that is not UTF-8 or not JSON, no non-empty caption, or a caption that is not valid Unicode (a lone
    surrogate from a JSON ``\ud800`` escape, which the tokenizer rejects: the sample is skipped)."""
    value: Any = None
    problems: list[str] = []
    if isinstance(raw.get("json"), bytes):
        meta: Any = None
        try:
            meta = json.loads(raw["json"].decode("utf-8"))
        except UnicodeDecodeError:
            problems.append("the .json member is not UTF-8")
        except json.JSONDecodeError:
            problems.append("the .json member is not JSON")
        if isinstance(meta, dict):
            value = meta.get(caption_key)
    if value is None and isinstance(raw.get("txt"), bytes):
        try:
            value = raw["txt"].decode("utf-8")
        except UnicodeDecodeError:
            problems.append("the .txt member is not UTF-8")
    values = value if isinstance(value, list) else [value]
    captions = [c.strip() for c in values if isinstance(c, str) and c.strip()]
    for caption in captions:
        if (problem := unicode_problem(caption)) is not None:
            return f"a caption is {problem}"
    if captions:
        return captions
    if problems:
        return "; ".join(problems)
    if not any(isinstance(raw.get(ext), bytes) for ext in ("json", "txt")):
        return "no caption (no .txt or .json member)"
    return f"no usable caption (no non-empty string in json `{caption_key}` or .txt)"


def read_captions(raw: dict[str, Any], caption_key: str = "caption") -> list[str]:
    """The usable captions of a tar sample (see :func:`sample_captions`); ``[]`` when there is none."""
    captions = sample_captions(raw, caption_key)
    return captions if isinstance(captions, list) else []


@dataclass(frozen=True)
class Slot:
    """Where one iterator of the stream sits: ``index`` of ``count`` readers (rank-major)."""

    rank: int
    worker: int
    index: int
    count: int


def epoch_share(total: int, slot: Slot) -> int:
    """Samples of a ``total``-sample epoch that reader ``slot`` yields (shares differ by at most one)."""
    base, extra = divmod(total, slot.count)
    return base + (1 if slot.index < extra else 0)


class NoReadableShards(UserError, RuntimeError):
    """An endless (resampled) shard stream drew many shards in a row without finding one sample: the shards
    are missing, unreadable or empty (each damaged one is named in the bad-sample file)."""


class _ShardWatch:
    """Stops an endless (resampled) stream whose shards yield nothing, instead of spinning forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.since_sample = 0

    def urls(self, source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for url in source:
            self.since_sample += 1
            if self.since_sample > self.limit:
                raise NoReadableShards(f"the last {self.limit} shards drawn yielded no sample (last: "
                                       f"{url.get('url')}); check that the shards exist and are readable tar files")
            yield url

    def samples(self, source: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in source:
            self.since_sample = 0
            yield sample


class ShardStream(EpochStream):
    """Training samples read from tar shards: ``Sample(image [3, H, W], caption, idx, key)`` or None.

    Iterating once is one epoch (see the module docstring); :meth:`set_epoch` selects which one
    (new shard draws, shard order and shuffle). Reader ``index = rank · workers + worker`` of
    ``count = world_size · workers`` gets:

    - resampled: shards drawn with replacement from the whole list, seeded from
      ``(seed, start, epoch, rank, worker)``;
    - not resampled: every ``count``-th shard from ``index`` of the list (shuffled the same way in
      every reader per epoch when ``shuffle_buffer`` > 0), so the readers partition the data.

    ``Sample.key`` numbers the samples of the run: ``start + epoch · epoch_samples + position · count
    + index``; caption choice and the transform's randomness derive from ``(seed, key)``.
    ``Sample.idx`` is :func:`key_id` of the tar key, so every caption of an image shares it. A sample
    whose image cannot be used or that has no usable caption is yielded as None (the collate function
    drops and counts it), counted in :attr:`skipped` and named in :attr:`bad` (once). A damaged shard
    (unreadable, corrupt header, truncated) is read as far as it can be, counted in :attr:`read_errors`
    and :attr:`damaged_shards`, its samples known lost added to :attr:`lost`, and named in :attr:`bad`
    (phase ``shard``; see the module docstring). The counters are per process (seen in the main process
    only with ``num_workers=0``) and count every epoch; the file names each sample and shard once. With
    ``with_text=False`` (image-only corpora) text members are ignored and every sample's caption is ``""``.
    """

    def __init__(self, shards: Sequence[str], transform: Callable[[Image.Image], Tensor], *, seed: int,
                 epoch_samples: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 0, resampled: bool = False, caption_key: str = "caption",
                 draft_size: int | None = None, with_text: bool = True, bad: BadSampleLog | None = None,
                 max_member_bytes: int = MAX_IMAGE_BYTES) -> None:
        super().__init__()
        if not shards:
            raise ValueError("a shard stream needs at least one shard")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = list(shards)
        self.transform = transform
        self.seed = seed
        self.epoch_samples = epoch_samples
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.caption_key = caption_key
        self.draft_size = draft_size
        self.with_text = with_text
        self.bad = bad if bad is not None else BadSampleLog()
        self.max_member_bytes = max_member_bytes
        self.epoch = 0
        self.skipped = 0
        self.read_errors = 0
        self.damaged_shards = 0
        self.lost = 0
        self._expected: dict[str, tuple[int, str] | None] = {}

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (call before creating the DataLoader iterator)."""
        self.epoch = epoch

    def slot(self) -> Slot:
        """This reader's place among all ranks and data-loader workers."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return Slot(self.rank, worker, self.rank * workers + worker, self.world_size * workers)

    def reader_seed(self, slot: Slot) -> int:
        """The 63-bit seed of ``slot``'s shard draws and shuffle buffer in the current epoch."""
        entropy = [self.seed, self.start, self.epoch, slot.rank, slot.worker]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def shard_share(self, slot: Slot) -> list[str]:
        """Shards of ``slot`` in a non-resampled epoch (the readers' shares partition the list)."""
        shards = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(sample_seed(self.seed, self.epoch)).shuffle(shards)
        return shards[slot.index::slot.count]

    def raw_samples(self, slot: Slot) -> Iterable[dict[str, Any]]:
        """Tar samples (``{"__key__", "__url__", ext: bytes}``) of ``slot`` in the current epoch, shuffled."""
        seed = self.reader_seed(slot)
        stages: list[Any]
        if self.resampled:
            watch = _ShardWatch(limit=20 * len(self.shards) + 20)
            source = wds.ResampledShards(self.shards, seed=seed, worker_seed=lambda: 0, deterministic=True)
            stages = [source, watch.urls, self.shard_samples, watch.samples]
        else:
            share = self.shard_share(slot)
            if not share:
                log.warning("reader %d of %d has no shard (only %d shards); it yields nothing",
                            slot.index, slot.count, len(self.shards))
                return []
            stages = [wds.SimpleShardList(share), self.shard_samples]
        if self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100),
                                      rng=random.Random(seed)))
        return wds.DataPipeline(*stages)

    def shard_samples(self, urls: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pipeline stage: ``{"url"}`` → the tar samples of each shard (:class:`TarShardReader`), damage
        counted and named (:meth:`shard_damaged`) once a shard has been read as far as it goes."""
        for item in urls:
            url = str(item["url"])
            path = local_path(url)
            if path is not None and (problem := file_problem(path)) is not None:
                self.shard_damaged(url, f"cannot be read: {problem}", 0)
                continue
            try:
                fileobj = wds.gopen(url, "rb")
            except Exception as err:  # noqa: BLE001 - webdataset's openers raise many kinds
                self.shard_damaged(url, f"cannot be opened: {err}", 0)
                continue
            reader = TarShardReader(url, fileobj, self.max_member_bytes)
            try:
                yield from reader
            finally:
                fileobj.close()
            if reader.complete and reader.damage:
                self.shard_damaged(url, "; ".join(reader.damage), reader.samples)

    def expected_samples(self, url: str) -> tuple[int, str] | None:
        """The sample count a shard should hold and where it comes from, when known: img2dataset's
        ``{name}_stats.json`` (``successes``) or ``pack_report.json`` (``shard_samples``) beside a local
        shard. Read only for damaged shards, at most once each."""
        if url in self._expected:
            return self._expected[url]
        found: tuple[int, str] | None = None
        path = local_path(url)
        if path is not None:
            stats = path.with_name(path.name.split(".", 1)[0] + "_stats.json")
            report = path.with_name("pack_report.json")
            for sidecar, pick in ((stats, lambda d: d.get("successes")),
                                  (report, lambda d: (d.get("shard_samples") or {}).get(path.name))):
                try:
                    data = read_json_bounded(sidecar, MAX_SIDECAR_BYTES)
                except Unusable:
                    continue
                count = pick(data) if isinstance(data, dict) else None
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    found = (count, sidecar.name)
                    break
        self._expected[url] = found
        return found

    def shard_damaged(self, url: str, damage: str, samples: int) -> None:
        """Count a damaged shard of which ``samples`` samples were read, and name it with the samples known
        lost (the expected count less those read, when the expected count is known)."""
        self.read_errors += 1
        self.damaged_shards += 1
        expected = self.expected_samples(url)
        lost: int | None = None
        if expected is not None:
            lost = max(expected[0] - samples, 0)
            self.lost += lost
            count = f"{samples} of {expected[0]} samples read ({expected[1]}): {lost} lost"
        else:
            count = (f"{samples} samples read; the number lost is unknown (no expected count: "
                     "{shard}_stats.json or pack_report.json)")
        reason = f"damaged shard: {damage}; {count}"
        if self.bad.record(BadSample("shard", url, reason, lost=lost), announce=False):
            log.warning("%s: %s%s", url, reason, self.bad.where())

    def __iter__(self) -> Iterator[Sample | None]:
        slot = self.slot()
        first_key = self.start + self.epoch * self.epoch_samples
        raw = itertools.islice(self.raw_samples(slot), epoch_share(self.epoch_samples, slot))
        for position, sample in enumerate(raw):
            yield self.to_sample(sample, first_key + position * slot.count + slot.index)

    def to_sample(self, raw: dict[str, Any], key: int) -> Sample | None:
        """Decode one tar sample; None (counted, named) when its image or caption is unusable."""
        captions = sample_captions(raw, self.caption_key) if self.with_text else [""]
        data = image_member(raw)
        image: Image.Image | None = None
        if isinstance(captions, str):
            phase, reason = "caption", captions
        elif data is None:
            phase, reason = "image", f"no image member ({', '.join(IMAGE_EXTENSIONS)})"
        else:
            try:
                image = decode_image(data, self.draft_size, self.max_member_bytes)
            except Unusable as err:
                phase, reason = "image", str(err)
        if image is None or isinstance(captions, str):
            self.skipped += 1
            notes = [n for n in raw.get("__problems__", ()) if n]
            if notes:
                reason += f" ({'; '.join(notes)})"
            self.bad.record(BadSample(phase, str(raw.get("__url__")), reason, key=str(raw.get("__key__"))))
            return None
        seed = sample_seed(self.seed, key)
        caption = captions[int(np.random.default_rng(seed).integers(len(captions)))]
        (pixels,) = seeded_transform(self.transform, [image], seed)
        return Sample(pixels, caption, key_id(raw["__key__"]), key)


@register("dataset", "webdataset", config=WebDatasetConfig)
class WebDatasetSource(DataSource):
    """Image-text pairs from webdataset tar shards (img2dataset output,
    :func:`vlkit.data.tools.pack.pack_json_dataset`); training reads them through :meth:`stream`, evaluation
    splits are ALBEF JSON files."""

    def __init__(self, cfg: WebDatasetConfig) -> None:
        self.cfg = cfg

    @property
    def shards(self) -> list[str]:
        """Every shard of the config, brace patterns expanded."""
        return expand_shards(self.cfg.shards)

    def prepare(self) -> None:
        """Check that the local shards and the evaluation files exist (remote shards are not checked)."""
        missing = [url for url in self.shards if (path := local_path(url)) is not None and not path.is_file()]
        missing += [f for files in self.cfg.eval_splits.values() for f in files if not Path(f).is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise MissingDataError(f"{len(missing)} data file(s) not found: {shown}")

    @property
    def image_root(self) -> Path:
        return Path(self.cfg.eval_image_root)

    def split_files(self, split: str) -> list[Path]:
        if split not in self.cfg.eval_splits:
            known = ", ".join(self.cfg.eval_splits) or "none"
            raise DataError(f"no evaluation split `{split}` (eval_splits names: {known}); "
                             "training data comes from the shards through stream()")
        return [Path(f) for f in self.cfg.eval_splits[split]]

    def training_set(self, request: TrainingRequest) -> TrainingSet:
        """The shard stream of this rank (image-text pairs only: shards hold no annotation lists to group
        or to split by modality)."""
        if request.modality != "pair":
            raise DataError(f"data.modality `{request.modality}` on webdataset pairs is not supported; use an "
                             "image_only source with `shards` (images) or a text_only source (texts)")
        if request.group_batches:
            raise DataError("data.group_batches needs annotation lists; a webdataset stream cannot group")
        stream = self.stream(request.transform, seed=request.seed, draft_size=request.draft_size, rank=request.rank,
                             world_size=request.world_size, bad=BadSampleLog(request.bad_samples))
        return TrainingSet(stream=stream, bad_samples=request.bad_samples).check(request, "the webdataset shards")

    def stream(self, transform: Callable[[Image.Image], Tensor], *, seed: int, start: int = 0, rank: int = 0,
               world_size: int = 1, draft_size: int | None = None, bad: BadSampleLog | None = None) -> ShardStream:
        """The training stream of rank ``rank`` of ``world_size`` (see :class:`ShardStream`).

        Args:
            transform: RGB PIL image → ``[3, H, W]`` tensor (may be random; seeded per sample).
            seed: run seed.
            start: samples consumed before (resume point): offsets the keys and reseeds the draws.
            rank, world_size: this process's place among the training processes.
            draft_size: decode JPEGs reduced while their sides stay ≥ this (None: full size).
            bad: where skipped samples and damaged shards are named (default: the log only).
        """
        return ShardStream(self.shards, transform, seed=seed, epoch_samples=self.cfg.epoch_samples, start=start,
                           rank=rank, world_size=world_size, shuffle_buffer=self.cfg.shuffle_buffer,
                           resampled=self.cfg.resampled, caption_key=self.cfg.caption_key, draft_size=draft_size,
                           bad=bad)
