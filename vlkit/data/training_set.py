"""What a data source hands training: a keyed dataset that an :class:`~vlkit.data.json_dataset.EpochSampler`
draws from, or an endless shard stream; :meth:`vlkit.data.sources.DataSource.training_set` builds it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from vlkit.core.errors import UserError
from vlkit.data.json_dataset import EntryList, epoch_length

log = logging.getLogger("vlkit.data")


class TooFewSamples(UserError, ValueError):
    """The training data holds no sample, or too few for one batch to be formed."""


class EpochStream(IterableDataset):
    """A sample stream read one epoch at a time (:class:`~vlkit.data.webdataset_source.ShardStream`): each
    iteration yields one epoch of at most ``epoch_samples`` samples."""

    epoch_samples: int

    def set_epoch(self, epoch: int) -> None:
        """Which epoch the next iteration draws (shuffling and sample keys depend on it)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TrainingRequest:
    """How training wants its samples.

    Attributes:
        modality: ``pair`` (image and caption), ``image`` or ``text``.
        split: the training split of annotation-list sources.
        transform: PIL image → ``[3, H, W]`` tensor (augmentations included).
        seed: the run seed (per-sample randomness is drawn from it and the sample key).
        rank: this process's rank.
        world_size: the number of training processes.
        draft_size: JPEG draft decoding size, or None.
        max_bad_fraction: share of malformed annotations tolerated before reading fails.
        group_batches: batches must be grouped by an entry's ``group`` (needs annotation lists).
        bad_samples: the run's ``bad_samples.jsonl``, where every skipped sample is named once
            (:mod:`vlkit.data.bad_samples`); None: the log only.
        batch_size: samples per optimizer step over all processes (the global batch), to check the
            data against; None: not checked.
        micro_batch: samples per process per micro-batch (the DataLoader's batch size, which drops an
            incomplete last batch); None: ``batch_size / world_size``.
        num_workers: data-loader worker processes per rank (a shard stream's epoch is divided over them).
    """

    modality: str
    split: str
    transform: Callable[[Image.Image], Tensor]
    seed: int
    rank: int = 0
    world_size: int = 1
    draft_size: int | None = None
    max_bad_fraction: float = 1.0
    group_batches: bool = False
    bad_samples: Path | None = None
    batch_size: int | None = None
    micro_batch: int | None = None
    num_workers: int = 0


@dataclass
class TrainingSet:
    """A source's training samples: exactly one of ``dataset`` (keyed, sampled per epoch) and ``stream``.

    Attributes:
        dataset: a map-style dataset whose keys an ``EpochSampler`` draws.
        stream: an endless shard stream (webdataset), epoch after epoch of ``stream.epoch_samples``.
        entries: the annotation entries behind ``dataset`` for image-text pairs (groups, parts, sampling
            ratios), None otherwise.
        annotations_skipped: malformed annotation entries left out.
        description: one line for the log.
        bad_samples: the file naming every skipped sample, when the request gave one.
    """

    dataset: Dataset | None = None
    stream: EpochStream | None = None
    entries: EntryList | None = None
    annotations_skipped: int = 0
    description: str = ""
    bad_samples: Path | None = None

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.stream is None):
            raise ValueError("a training set is a keyed dataset or a stream, exactly one of them")

    def epoch_samples(self) -> int:
        """Samples in one epoch: a stream's ``epoch_samples``; for a keyed dataset the sampler's epoch
        (every entry once, or as the annotation parts' sampling ratios say)."""
        if self.stream is not None:
            return self.stream.epoch_samples
        if self.entries is not None:
            sizes = [0] * len(self.entries.ratios)
            for part in self.entries.part_of:
                sizes[part] += 1
            return epoch_length(sizes, self.entries.ratios)
        assert isinstance(self.dataset, Sized)
        return len(self.dataset)

    def check(self, request: TrainingRequest, what: str = "the training data") -> TrainingSet:
        """Refuse data that cannot fill a batch, warn about data smaller than one; returns ``self``.

        - No sample at all: :class:`TooFewSamples`.
        - A stream whose readers (``world_size × max(num_workers, 1)``, each reading its share of an
          epoch and dropping its incomplete last batch) cannot form a single micro-batch in an epoch:
          :class:`TooFewSamples` (training would wait forever for a batch).
        - An epoch smaller than one global batch: a warning (a keyed dataset's endless sampler wraps
          into the next epoch, so every batch repeats samples; a repeated image in a contrastive batch
          is its own false negative).
        """
        samples = self.epoch_samples()
        if samples == 0:
            raise TooFewSamples(f"{what} holds no usable sample")
        if request.batch_size is None:
            return self
        world = request.world_size
        micro = request.micro_batch or max(request.batch_size // world, 1)
        if self.stream is not None:
            workers = max(request.num_workers, 1)
            readers = world * workers
            base, extra = divmod(samples, readers)
            batches = extra * ((base + 1) // micro) + (readers - extra) * (base // micro)
            if batches == 0:
                raise TooFewSamples(
                    f"{what}: an epoch of {samples} samples is read by {world} process(es) × {workers} loader "
                    f"worker(s) = {readers} readers, {base}{'–' + str(base + 1) if extra else ''} samples each, "
                    f"fewer than one micro-batch of {micro}: no batch can be formed (each reader drops its "
                    f"incomplete last batch). Raise epoch_samples to at least {micro * readers}, or lower "
                    "data.num_workers or train.batch_size")
            dropped = samples - batches * micro
            if dropped:
                log.info("%s: %d of the %d samples of each epoch are dropped (each of %d readers drops its "
                         "incomplete last micro-batch of %d)", what, dropped, samples, readers, micro)
        if samples < request.batch_size:
            effect = ("each optimizer step spans several epochs" if self.stream is not None else
                      "every batch repeats samples, and an image repeated in a contrastive batch is its own false "
                      "negative")
            log.warning("%s: an epoch holds %d samples, fewer than one batch of %d (train.batch_size): %s; add "
                        "data or lower train.batch_size", what, samples, request.batch_size, effect)
        return self
