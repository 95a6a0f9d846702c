"""What a data source hands training: a keyed dataset that an :class:`~vlkit.data.json_dataset.EpochSampler`
draws from, or an endless shard stream; :meth:`vlkit.data.sources.DataSource.training_set` builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from vlkit.data.json_dataset import EntryList


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
    """

    dataset: Dataset | None = None
    stream: EpochStream | None = None
    entries: EntryList | None = None
    annotations_skipped: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.stream is None):
            raise ValueError("a training set is a keyed dataset or a stream, exactly one of them")
