"""Single-modality corpora for stage-wise pre-training (VLMo: images for masked image modelling, then
text for masked language modelling) — registry kind ``dataset``:

- ``image_only``: image folders (searched recursively) or webdataset shards (text members ignored).
- ``text_only``: plain text files (one text per non-blank line) and JSON-lines files (a ``text_key``
  field per line; ``.jsonl`` / ``.json`` / ``.ndjson``).

Their samples, datasets and collate functions are in :mod:`vlkit.data.single_modality`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch import Tensor

from vlkit.core.errors import DataError, MissingDataError
from vlkit.data.bad_samples import BadSampleLog
from vlkit.data.image_files import list_images
from vlkit.data.single_modality import (
    ImageFileDataset,
    TextCorpus,
)
from vlkit.data.sources import DataSource
from vlkit.data.training_set import TrainingRequest, TrainingSet
from vlkit.data.webdataset_source import IMAGE_EXTENSIONS, ShardStream, expand_shards, local_path
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError


# ---------------------------------------------------------------------------------------------- sources
class CorpusSource(DataSource):
    """A single-modality source: no evaluation splits, no image-text pairs."""

    def split_files(self, split: str) -> list[Path]:
        raise DataError(f"a `{self.modality}`-only corpus has no evaluation split `{split}`")

    def _check_modality(self, modality: str) -> None:
        if modality != self.modality:
            raise DataError(f"this source holds {self.modality}s only; data.modality `{modality}` needs a source "
                             f"with {modality}s")

    @property
    def image_root(self) -> Path:
        return Path(".")


@dataclass(kw_only=True)
class ImageOnlyConfig(ComponentConfig):
    """Images without text.

    Attributes:
        folders: image folders, searched recursively (files with ``extensions``).
        shards: or webdataset shards (brace patterns; only the image member of each sample is read).
        epoch_samples: samples per epoch with ``shards`` (default with folders: one pass).
        shuffle_buffer: shard samples in each worker's shuffle buffer.
        resampled: draw shards with replacement, endlessly.
        extensions: image file extensions in ``folders``.
    """

    folders: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    epoch_samples: int | None = None
    shuffle_buffer: int = 1000
    resampled: bool = True
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))

    def __post_init__(self) -> None:
        if bool(self.folders) == bool(self.shards):
            raise ConfigError("name image `folders` or webdataset `shards` (exactly one of them)", key="folders")
        if self.shards and (self.epoch_samples is None or self.epoch_samples <= 0):
            raise ConfigError("a positive sample count is needed with shards", key="epoch_samples")


@register("dataset", "image_only", config=ImageOnlyConfig)
class ImageOnlySource(CorpusSource):
    """Images without text (folders or shards), e.g. for masked image modelling."""

    modality = "image"

    def __init__(self, cfg: ImageOnlyConfig) -> None:
        self.cfg = cfg
        self._files: list[Path] | None = None

    def prepare(self) -> None:
        missing = [f for f in self.cfg.folders if not Path(f).is_dir()]
        missing += [u for u in expand_shards(self.cfg.shards) if (p := local_path(u)) is not None and not p.is_file()]
        if missing:
            raise MissingDataError(f"image corpus not found: {', '.join(missing[:10])}")
        if self.cfg.folders and not self.files():
            raise MissingDataError(f"no images ({', '.join(self.cfg.extensions)}) under {', '.join(self.cfg.folders)}")

    def training_set(self, request: TrainingRequest) -> TrainingSet:
        """The corpus's images: a keyed dataset (folders) or this rank's shard stream (shards); unreadable
        images and damaged shards are named in ``request.bad_samples``."""
        self._check_modality(request.modality)
        data = self.dataset(request.transform, seed=request.seed, rank=request.rank, world_size=request.world_size,
                            draft_size=request.draft_size, bad=BadSampleLog(request.bad_samples))
        training = TrainingSet(stream=data) if isinstance(data, ShardStream) else TrainingSet(dataset=data)
        training.bad_samples = request.bad_samples
        return training.check(request, "the image corpus")

    def files(self) -> list[Path]:
        """The image files of ``folders`` (listed once)."""
        if self._files is None:
            self._files = list_images(self.cfg.folders, self.cfg.extensions)
        return self._files

    def dataset(self, transform: Callable[[Image.Image], Tensor], *, seed: int, start: int = 0, rank: int = 0,
                world_size: int = 1, draft_size: int | None = None,
                bad: BadSampleLog | None = None) -> ImageFileDataset | ShardStream:
        """Folders: a keyed :class:`ImageFileDataset` (pair it with an ``EpochSampler``); shards: a
        :class:`ShardStream` of rank ``rank`` of ``world_size`` that ignores text members. ``bad``: where
        skipped samples are named."""
        if self.cfg.folders:
            return ImageFileDataset(self.files(), transform, seed=seed, draft_size=draft_size, bad=bad)
        assert self.cfg.epoch_samples is not None
        return ShardStream(expand_shards(self.cfg.shards), transform, seed=seed, epoch_samples=self.cfg.epoch_samples,
                           start=start, rank=rank, world_size=world_size, shuffle_buffer=self.cfg.shuffle_buffer,
                           resampled=self.cfg.resampled, draft_size=draft_size, with_text=False, bad=bad)


@dataclass(kw_only=True)
class TextOnlyConfig(ComponentConfig):
    """Text without images.

    Attributes:
        files: ``.txt`` files (one text per non-blank line) and JSON-lines files (``.jsonl``, ``.json``,
            ``.ndjson``: one object per line with a ``text_key`` string).
        text_key: the text field of JSON lines.
    """

    files: list[str]
    text_key: str = "text"

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("name at least one text file", key="files")


@register("dataset", "text_only", config=TextOnlyConfig)
class TextOnlySource(CorpusSource):
    """Texts without images (e.g. Wikipedia / BookCorpus lines), e.g. for text-only MLM."""

    modality = "text"

    def __init__(self, cfg: TextOnlyConfig) -> None:
        self.cfg = cfg

    def prepare(self) -> None:
        missing = [f for f in self.cfg.files if not Path(f).is_file()]
        if missing:
            raise MissingDataError(f"text files not found: {', '.join(missing)}")

    def training_set(self, request: TrainingRequest) -> TrainingSet:
        """The indexed corpus (unusable lines named in ``request.bad_samples`` by rank 0)."""
        self._check_modality(request.modality)
        bad = BadSampleLog(request.bad_samples) if request.rank == 0 else None
        return TrainingSet(dataset=self.dataset(request.max_bad_fraction, bad),
                           bad_samples=request.bad_samples).check(request, "the text corpus")

    def dataset(self, max_bad_fraction: float = 1.0, bad: BadSampleLog | None = None) -> TextCorpus:
        """The indexed corpus (reads every file once; unusable lines named in ``bad``)."""
        return TextCorpus(self.cfg.files, self.cfg.text_key, max_bad_fraction, bad)
