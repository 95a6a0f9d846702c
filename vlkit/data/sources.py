"""Dataset sources (registry kind ``dataset``): where a recipe's splits, images and tokenizer live.

- ``synthetic``: vlkit's procedurally generated shapes world, generated on first use and cached
  under ``root`` (default ``$VLKIT_DATA`` or ``~/.cache/vlkit/data``); it brings its own tokenizer.
- ``json_pairs``: ALBEF-style JSON annotation files per split and an image root.

A source answers three questions: :meth:`DataSource.prepare` (make the files exist),
:meth:`DataSource.split_files` (annotation files of a split) and :attr:`DataSource.image_root`; plus
the optional compositional-probe file of a split and a bundled tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlkit.core.errors import ConfigError, DataError, MissingDataError
from vlkit.data.bad_samples import BadSampleLog
from vlkit.data.formats.classification import Classification
from vlkit.data.json_dataset import AnnotationPart, PairDataset, read_parts
from vlkit.data.single_modality import ImageFileDataset, TextListDataset
from vlkit.data.synthetic import SynthConfig, ensure
from vlkit.data.synthetic.classification import largest_object_classes
from vlkit.data.synthetic.grounding import Expression, referring_expressions
from vlkit.data.training_set import TooFewSamples, TrainingRequest, TrainingSet
from vlkit.registry import register
from vlkit.schema import ComponentConfig


def default_data_root() -> Path:
    """``$VLKIT_DATA`` or ``~/.cache/vlkit/data``."""
    return Path(os.environ.get("VLKIT_DATA") or Path.home() / ".cache" / "vlkit" / "data")


class DataSource:
    """Base of dataset sources. ``modality``: what a training sample holds — ``pair`` (image and
    caption), ``image`` or ``text`` (single-modality corpora, :mod:`vlkit.data.corpora`)."""

    modality: str = "pair"

    def prepare(self) -> None:
        """Make the data exist locally (generate, check files); may take a while, done once."""

    @property
    def image_root(self) -> Path:
        raise NotImplementedError

    def split_files(self, split: str) -> list[Path]:
        """Annotation files of ``split`` (an error naming the valid splits if unknown)."""
        raise NotImplementedError

    def training_set(self, request: TrainingRequest) -> TrainingSet:
        """The training samples of an annotation-list source (the entries of ``request.split``): image-text
        pairs, or for image- or text-only training the entries' images or all their captions. Skipped
        entries and unreadable images are named in ``request.bad_samples`` (annotation entries by rank 0)."""
        bad = BadSampleLog(request.bad_samples)
        entries = read_parts(self.split_parts(request.split), max_bad_fraction=request.max_bad_fraction,
                             bad=bad if request.rank == 0 else None)
        what = f"the `{request.split}` split"
        if not entries.entries:
            raise TooFewSamples(f"{what} has no usable entries")
        if request.modality == "pair":
            dataset = PairDataset(entries.entries, request.transform, seed=request.seed, draft_size=request.draft_size,
                                  bad=bad)
            return TrainingSet(dataset=dataset, entries=entries, annotations_skipped=entries.skipped,
                               bad_samples=request.bad_samples).check(request, what)
        single: ImageFileDataset | TextListDataset
        if request.modality == "image":
            single = ImageFileDataset([e.image for e in entries.entries], request.transform, seed=request.seed,
                                      draft_size=request.draft_size, bad=bad)
        else:
            single = TextListDataset([caption for e in entries.entries for caption in e.captions])
        return TrainingSet(dataset=single, annotations_skipped=entries.skipped, bad_samples=request.bad_samples,
                           description=f"{request.modality}-only training on the {request.split} split: "
                                       f"{len(single)} {request.modality}s").check(request, what)

    def split_parts(self, split: str) -> list[AnnotationPart]:
        """Annotation files of ``split`` with their image roots and sampling ratios (default: every
        file relative to :attr:`image_root`, ratio 1)."""
        return [AnnotationPart(Path(f), self.image_root) for f in self.split_files(split)]

    def swap_file(self, split: str) -> Path | None:
        """The compositional-probe annotations of ``split``, if the source has them."""
        return None

    @property
    def tokenizer(self) -> Path | None:
        """A tokenizer folder that comes with the data, if any."""
        return None

    def task_files(self, task: str, split: str) -> list[Path]:
        """Annotation files of downstream ``task`` (``ve``, ``nlvr2``, ``vqa``) for ``split``, for
        sources that ship them."""
        raise DataError(f"the `{type(self).__name__}` source ships no {task} annotations; name them in the "
                         f"recipe's task.splits, e.g. {{train: [{task}_train.json], test: [{task}_test.json]}}")

    def referring_expressions(self, split: str) -> list[Expression]:
        """Grounding expressions with boxes of ``split``, for sources that have them."""
        raise DataError(f"the `{type(self).__name__}` source has no grounding expressions; give the task "
                         "`annotations`: a JSON list of {image, text, box: [left, top, right, bottom]}")

    def classification(self, split: str, attribute: str) -> Classification:
        """A single-label classification of ``split`` by ``attribute``, for sources that have one."""
        raise DataError(f"the `{type(self).__name__}` source has no classification split; point the task at "
                         "an image folder (`image_folder`) or a JSON list of {image, label} (`annotations`)")


@dataclass(kw_only=True)
class SyntheticSourceConfig(ComponentConfig, SynthConfig):
    """The embedded shapes world (generation settings from :class:`SynthConfig`).

    Attributes:
        root: cache folder for generated datasets (null: ``$VLKIT_DATA`` or ``~/.cache/vlkit/data``).
    """

    root: str | None = None


@register("dataset", "synthetic", config=SyntheticSourceConfig)
class SyntheticSource(DataSource):
    """vlkit's shapes world, generated on first use (ALBEF-format JSON + PNG + its own tokenizer)."""

    SPLITS = ("train", "val", "test")

    def __init__(self, cfg: SyntheticSourceConfig) -> None:
        self.cfg = cfg
        self._folder: Path | None = None

    def synth_config(self) -> SynthConfig:
        names = {f.name for f in dataclasses.fields(SynthConfig)}
        return SynthConfig(**{k: v for k, v in dataclasses.asdict(self.cfg).items() if k in names})

    def prepare(self) -> None:
        if self._folder is None:
            root = Path(self.cfg.root) if self.cfg.root else default_data_root()
            self._folder = ensure(root, self.synth_config())

    @property
    def folder(self) -> Path:
        self.prepare()
        assert self._folder is not None
        return self._folder

    @property
    def image_root(self) -> Path:
        return self.folder

    def split_files(self, split: str) -> list[Path]:
        if split not in self.SPLITS:
            raise DataError(f"the synthetic data has splits {', '.join(self.SPLITS)}, not `{split}`")
        return [self.folder / f"{split}.json"]

    def swap_file(self, split: str) -> Path | None:
        path = self.folder / f"{split}_swaps.json"
        return path if path.exists() else None

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer"

    TASK_PREFIXES = {"ve": "ve", "nlvr2": "nlvr", "vqa": "vqa"}

    def referring_expressions(self, split: str) -> list[Expression]:
        """"the {colour} {shape}" for every object unique in its image (see :mod:`.synthetic.grounding`)."""
        if split not in self.SPLITS:
            raise DataError(f"the synthetic data has splits {', '.join(self.SPLITS)}, not `{split}`")
        return referring_expressions(self.folder, split)

    def task_files(self, task: str, split: str) -> list[Path]:
        if task not in self.TASK_PREFIXES:
            return super().task_files(task, split)
        if split not in self.SPLITS:
            raise DataError(f"the synthetic data has splits {', '.join(self.SPLITS)}, not `{split}`")
        return [self.folder / f"{self.TASK_PREFIXES[task]}_{split}.json"]

    def classification(self, split: str, attribute: str) -> Classification:
        """The colour or shape of each image's largest object (see :mod:`vlkit.data.synthetic.classification`)."""
        if split not in self.SPLITS:
            raise DataError(f"the synthetic data has splits {', '.join(self.SPLITS)}, not `{split}`")
        if attribute not in ("color", "shape"):
            raise ConfigError(f"synthetic classes are `color` or `shape`, not `{attribute}`")
        return largest_object_classes(self.folder, split, attribute)  # type: ignore[arg-type]


@dataclass(kw_only=True)
class AnnotationFileConfig:
    """One annotation file of a split, in the long form.

    Attributes:
        file: the JSON list.
        image_root: folder its ``image`` paths are relative to (null: the source's ``image_root``).
        ratio: sampling ratio per epoch (2: every entry twice; 0.5: a random half each epoch).
    """

    file: str
    image_root: str | None = None
    ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.ratio < 0:
            raise ConfigError(f"must be ≥ 0, got {self.ratio}", key="ratio")


@dataclass(kw_only=True)
class JsonPairsConfig(ComponentConfig):
    """ALBEF-style annotations.

    Attributes:
        splits: split name → annotation files (``[{"image": path, "caption": str | [str]}]``), each a
            path (relative to the working directory, or absolute) or ``{file, image_root, ratio}`` to
            give it its own image folder and sampling ratio, e.g.
            ``train: [coco.json, {file: cc3m.json, image_root: /data/cc3m, ratio: 0.5}]``.
        image_root: folder the ``image`` paths are relative to (unless a file names its own).
        swaps: split name → compositional-probe file (``[{"image", "caption", "swapped"}]``), optional.
    """

    splits: dict[str, list[str | AnnotationFileConfig]] = field(default_factory=dict)
    image_root: str = "."
    swaps: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.splits:
            raise ConfigError("name at least one split, e.g. {train: [coco.json, vg.json]}", key="splits")


@register("dataset", "json_pairs", config=JsonPairsConfig)
class JsonPairsSource(DataSource):
    """Image-caption pairs from ALBEF-style JSON files (COCO, VG, SBU, CC as ALBEF distributes them)."""

    def __init__(self, cfg: JsonPairsConfig) -> None:
        self.cfg = cfg

    def _parts(self, files: list[str | AnnotationFileConfig]) -> list[AnnotationPart]:
        return [AnnotationPart(Path(f), self.image_root) if isinstance(f, str)
                else AnnotationPart(Path(f.file), Path(f.image_root) if f.image_root else self.image_root, f.ratio)
                for f in files]

    def prepare(self) -> None:
        parts = [p for files in self.cfg.splits.values() for p in self._parts(files)]
        missing = [str(p.file) for p in parts if not p.file.is_file()]
        if missing:
            raise MissingDataError(f"annotation files not found: {', '.join(missing)}")
        roots = sorted({str(p.image_root) for p in parts if not p.image_root.is_dir()})
        if roots:
            raise MissingDataError(f"image folders not found: {', '.join(roots)}")

    @property
    def image_root(self) -> Path:
        return Path(self.cfg.image_root)

    def split_parts(self, split: str) -> list[AnnotationPart]:
        if split not in self.cfg.splits:
            raise DataError(f"no split `{split}`; the recipe names {', '.join(self.cfg.splits)}")
        return self._parts(self.cfg.splits[split])

    def split_files(self, split: str) -> list[Path]:
        return [p.file for p in self.split_parts(split)]

    def swap_file(self, split: str) -> Path | None:
        return Path(self.cfg.swaps[split]) if split in self.cfg.swaps else None
