"""Checks before heavy work: what ``vlkit train``, ``finetune`` and ``eval`` would otherwise find only
after minutes of data preparation, found in about a second, by ``vlkit recipes show`` and by those
commands before they start.

Two groups, each problem one :class:`~vlkit.core.errors.UserError` that names the key, the file that
set it and the fix:

- **the recipe** (:func:`check_recipe`, anywhere): the model is built on the ``meta`` device (nothing is
  allocated, nothing downloaded), so shapes that do not fit surface; ``freeze`` patterns that match no
  parameter; a data source that brings no tokenizer without ``data.tokenizer``; a ``train.device`` that is
  no device; a tokenizer name that is neither a path nor a hub repository;
- **this machine** (:func:`check_machine`): the data source's annotation lists, shards and image folders
  (local paths; ``synthetic`` generates its own), the swap-probe files, the task's files, the tokenizer
  (a folder, or a hub repository in the local cache when offline) and its vocabulary against the
  encoder's rows, ``init_from`` and the towers' ``init`` files (their headers read, not their tensors),
  ``train.device`` and the attention backend.

The command-line checks (``--out``, ``--checkpoint``, ``--resume``) are here too.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vlkit import registry
from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.errors import (
    CheckpointError,
    DataError,
    MissingCheckpointError,
    MissingDataError,
    RecipeError,
    UserError,
)
from vlkit.core.weight_source import parse_source
from vlkit.data.config import DataConfig
from vlkit.data.corpora import ImageOnlyConfig, TextOnlyConfig
from vlkit.data.sources import JsonPairsConfig, SyntheticSource, SyntheticSourceConfig, default_data_root
from vlkit.data.synthetic.cache import dataset_dir, is_complete
from vlkit.data.synthetic.lexicon import all_words
from vlkit.data.synthetic.tokenizer import learn_vocab
from vlkit.data.webdataset_source import WebDatasetConfig, expand_shards, local_path
from vlkit.encoders.base import Encoder
from vlkit.nn.attention import xformers_available
from vlkit.recipe import Recipe
from vlkit.tasks.base import Task
from vlkit.tasks.classification import FusedTaskConfig
from vlkit.tasks.grounding import GroundingConfig
from vlkit.tasks.vqa import VQAConfig
from vlkit.tasks.zeroshot import ZeroShotConfig
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release
from vlkit.weights.files import weights_file_problem
from vlkit.weights.init_from import find_checkpoint

Origins = Callable[[str], str]

SOURCES_WITHOUT_TOKENIZER = (JsonPairsConfig, WebDatasetConfig, ImageOnlyConfig, TextOnlyConfig)
"""Built-in data sources that bring no tokenizer (``synthetic`` brings its own; a plug-in's is not known
before it is built)."""

SOURCE_MODALITY: dict[type, str] = {SyntheticSourceConfig: "pair", JsonPairsConfig: "pair", WebDatasetConfig: "pair",
                                    ImageOnlyConfig: "image", TextOnlyConfig: "text"}
"""What a training sample of each built-in source holds (``DataSource.modality``)."""

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _no_origin(key: str) -> str:
    return ""


@dataclass(frozen=True)
class Needed:
    """A file or folder a recipe names.

    Attributes:
        key: the dotted recipe key that names it.
        path: the path as the run will open it (relative to the working directory).
        folder: a folder is needed, not a file.
    """

    key: str
    path: Path
    folder: bool = False


# ------------------------------------------------------------------------------------------ entry points
def check_before_work(recipe: Recipe, origins: Origins = _no_origin, *, machine: bool = True) -> None:
    """Every check of this module for a validated recipe: :func:`check_recipe`, then (``machine``)
    :func:`check_machine`. Raises the first :class:`UserError` found."""
    encoder = check_recipe(recipe, origins)
    if machine:
        check_machine(recipe, origins, encoder)


def check_recipe(recipe: Recipe, origins: Origins = _no_origin) -> Encoder:
    """The checks that hold on any machine; returns the encoder built on the ``meta`` device."""
    _check_device_name(recipe, origins)
    if recipe.data is not None:
        _check_tokenizer_named(recipe.data, origins)
    if recipe.data is not None and not _task_trains_own_objectives(recipe):
        _check_train_split(recipe.data, origins)
    encoder = _check_model(recipe, origins)
    if recipe.data is not None and recipe.data.tokenizer is None and isinstance(recipe.data.source,
                                                                                 SyntheticSourceConfig):
        _check_vocabulary(synthetic_vocabulary_size(recipe.data.source.vocab_size), "the synthetic data's tokenizer",
                          encoder, origins)
    return encoder


def check_machine(recipe: Recipe, origins: Origins = _no_origin, encoder: Encoder | None = None) -> None:
    """The checks of files and devices on this machine (``encoder``: the meta-built encoder, for the
    tokenizer's vocabulary; built here when not given)."""
    encoder = encoder if encoder is not None else build_encoder(recipe.encoder, device="meta", load_weights=False)
    _check_device_here(recipe, origins)
    needed = list(weight_files(recipe))
    if recipe.data is not None:
        needed += data_files(recipe.data)
    if recipe.task is not None:
        needed += task_files(recipe.task)
    for item in needed:
        check_exists(item, origins)
    for key, path in _weights_to_read(recipe, origins):
        if path.is_file() and (problem := weights_file_problem(path)) is not None:
            raise CheckpointError(f"{_at(origins, key)}{problem}")
        if key == "init_from" and (problem := checkpoint_problem(path)) is not None:
            raise CheckpointError(f"{_at(origins, key)}{problem}")
    if recipe.data is not None:
        _check_tokenizer_here(recipe.data, encoder, origins)


# ------------------------------------------------------------------------------------------ the recipe
def _at(origins: Origins, key: str) -> str:
    """``file:line: `key`: `` — the prefix of a message about ``key``."""
    source = origins(key)
    return f"{source}: `{key}`: " if source else f"`{key}`: "


def _check_device_name(recipe: Recipe, origins: Origins) -> None:
    name = recipe.train.device
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise RecipeError(f"`train.device`: `{registry.shown(name)}` is not a device; use auto, cpu, cuda or cuda:N",
                          source=origins("train.device"), key="train.device") from None


def _check_tokenizer_named(data: DataConfig, origins: Origins) -> None:
    """A tokenizer where one is needed, and a name that can be one (a path, or a hub repository id)."""
    modality = data.modality or SOURCE_MODALITY.get(type(data.source), "pair")
    if data.tokenizer is None:
        if modality != "image" and isinstance(data.source, SOURCES_WITHOUT_TOKENIZER):
            raise RecipeError(f"`data.tokenizer` is not set and data source `{data.source.type}` brings no tokenizer; "
                              "set it to a BERT tokenizer folder (or a hub name such as bert-base-uncased)",
                              source=origins("data.source"), key="data.tokenizer")
        return
    source = parse_source(data.tokenizer, "text")
    if source.kind == "hub":
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(source.name)
        except HFValidationError:
            raise RecipeError(f"`data.tokenizer`: `{registry.shown(data.tokenizer)}` is neither a folder on this "
                              "machine nor a Hugging Face repository name; point it at a tokenizer folder",
                              source=origins("data.tokenizer"), key="data.tokenizer") from None


def _check_train_split(data: DataConfig, origins: Origins) -> None:
    """``data.train_split`` names a split the source has (annotation-list sources; a shard stream has none)."""
    source = data.source
    splits = list(source.splits) if isinstance(source, JsonPairsConfig) else \
        list(SyntheticSource.SPLITS) if isinstance(source, SyntheticSourceConfig) else None
    if splits is not None and data.train_split not in splits:
        raise RecipeError(f"`data.train_split` is `{registry.shown(data.train_split)}`, but the data source has the "
                          f"splits {', '.join(splits)}{registry.did_you_mean(data.train_split, splits)}",
                          source=origins("data.train_split"), key="data.train_split")


def _task_trains_own_objectives(recipe: Recipe) -> bool:
    if recipe.task is None:
        return False
    target = registry.get("task", recipe.task.type).target
    return isinstance(target, type) and issubclass(target, Task) and target.trains_own_objectives


def _check_model(recipe: Recipe, origins: Origins) -> Encoder:
    """Build the model on ``meta`` (shapes only) and match the ``freeze`` patterns against its trainable
    parameters. With a task that trains its own heads only the encoder is known here: patterns outside
    ``encoder.`` are left to the run."""
    encoder = build_encoder(recipe.encoder, device="meta", load_weights=False)
    own = _task_trains_own_objectives(recipe)
    if recipe.objectives and not own:
        with torch.device("meta"):
            model = build_pretrain_model(encoder, recipe.objectives, recipe.momentum)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
    else:
        names = [f"encoder.{name}" for name, p in encoder.named_parameters() if p.requires_grad]
    for index, pattern in enumerate(recipe.freeze):
        if own and not pattern.startswith("encoder."):
            continue
        if not fnmatch.filter(names, pattern):
            close = _close_names(pattern, names)
            raise RecipeError(f"`freeze[{index}]`: `{registry.shown(pattern)}` matches no trainable parameter"
                              + (f"; names look like: {', '.join(close)}" if close else "")
                              + " (vlkit recipes show RECIPE --params lists the parts)",
                              source=origins("freeze"), key=f"freeze[{index}]")
    return encoder


def _close_names(pattern: str, names: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(pattern.replace("*", "")[:200], names, n=3, cutoff=0.3)


# ------------------------------------------------------------------------------------------ this machine
def _check_device_here(recipe: Recipe, origins: Origins) -> None:
    name = recipe.train.device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"`train.device` is `{name}`, but CUDA is not available on this machine; use auto or cpu",
                              source=origins("train.device"), key="train.device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RecipeError(f"`train.device` is `{name}`, but this machine has {torch.cuda.device_count()} CUDA "
                              "device(s)",
                              source=origins("train.device"), key="train.device")
    if recipe.encoder.attention == "xformers" and (device.type != "cuda" or not xformers_available()):
        why = "xformers is not importable" if device.type == "cuda" else f"it has no kernels for `{device.type}`"
        raise RecipeError(f"`encoder.attention` is `xformers`, but {why}; use auto (xformers on CUDA when "
                          "installed, else sdpa) or sdpa",
                          source=origins("encoder.attention"), key="encoder.attention")


def check_exists(item: Needed, origins: Origins = _no_origin) -> None:
    """A :class:`MissingDataError` (or :class:`DataError` when it cannot be read) naming ``item``'s key."""
    path = item.path
    kind = "folder" if item.folder else "file"
    relative = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if not path.exists():
        raise MissingDataError(f"{_at(origins, item.key)}{kind} {path} does not exist{relative}; fix the path")
    if item.folder != path.is_dir():
        other = "a folder" if path.is_dir() else "not a folder"
        raise DataError(f"{_at(origins, item.key)}{path} is {other}; name a {kind}")
    if not os.access(path, os.R_OK | (os.X_OK if item.folder else 0)):
        raise DataError(f"{_at(origins, item.key)}{kind} {path} cannot be read (permissions)")


def data_files(data: DataConfig) -> Iterator[Needed]:
    """The local files and folders the built-in data sources read (what their ``prepare`` checks, and the
    swap-probe files the evaluation reads); none for ``synthetic`` (generated) and plug-in sources."""
    source = data.source
    key = "data.source"
    if isinstance(source, JsonPairsConfig):
        uses_root = False
        for split, files in source.splits.items():
            for index, entry in enumerate(files):
                at = f"{key}.splits.{split}[{index}]"
                if isinstance(entry, str):
                    uses_root = True
                    yield Needed(at, Path(entry))
                    continue
                yield Needed(f"{at}.file", Path(entry.file))
                if entry.image_root:
                    yield Needed(f"{at}.image_root", Path(entry.image_root), folder=True)
                else:
                    uses_root = True
        if uses_root:
            yield Needed(f"{key}.image_root", Path(source.image_root), folder=True)
        for split, file in source.swaps.items():
            yield Needed(f"{key}.swaps.{split}", Path(file))
    elif isinstance(source, WebDatasetConfig):
        yield from _shards(f"{key}.shards", source.shards)
        for split, eval_files in source.eval_splits.items():
            for index, eval_file in enumerate(eval_files):
                yield Needed(f"{key}.eval_splits.{split}[{index}]", Path(eval_file))
        if source.eval_splits:
            yield Needed(f"{key}.eval_image_root", Path(source.eval_image_root), folder=True)
    elif isinstance(source, ImageOnlyConfig):
        for index, folder in enumerate(source.folders):
            yield Needed(f"{key}.folders[{index}]", Path(folder), folder=True)
        yield from _shards(f"{key}.shards", source.shards)
    elif isinstance(source, TextOnlyConfig):
        for index, file in enumerate(source.files):
            yield Needed(f"{key}.files[{index}]", Path(file))


def _shards(key: str, patterns: list[str]) -> Iterator[Needed]:
    for index, pattern in enumerate(patterns):
        for url in expand_shards([pattern]):
            if (path := local_path(url)) is not None:
                yield Needed(f"{key}[{index}]", path)


def task_files(task: object) -> Iterator[Needed]:
    """The local files and folders the built-in tasks name (empty keys use the data source's)."""
    if isinstance(task, FusedTaskConfig):
        for split, files in task.splits.items():
            for index, file in enumerate(files):
                yield Needed(f"task.splits.{split}[{index}]", Path(file))
        if task.image_root:
            yield Needed("task.image_root", Path(task.image_root), folder=True)
        if isinstance(task, VQAConfig) and task.answer_list:
            yield Needed("task.answer_list", Path(task.answer_list))
    elif isinstance(task, ZeroShotConfig):
        if task.image_folder:
            yield Needed("task.image_folder", Path(task.image_folder), folder=True)
        if task.annotations:
            yield Needed("task.annotations", Path(task.annotations))
            yield Needed("task.image_root", Path(task.image_root), folder=True)
    elif isinstance(task, GroundingConfig):
        for key, value in (("annotations", task.annotations), ("detections", task.detections), ("refs", task.refs),
                           ("instances", task.instances)):
            if value:
                yield Needed(f"task.{key}", Path(value))
        if task.annotations:
            yield Needed("task.image_root", Path(task.image_root), folder=True)


def weight_files(recipe: Recipe) -> Iterator[Needed]:
    """The local weights the recipe names: the towers' ``init`` paths (hub and timm names are not files)."""
    for tower, init in recipe.encoder.tower_inits().items():
        source = init.source("image" if tower in ("", "image") else "text")
        if source.kind == "path":
            key = f"encoder.{tower}.init" if tower else "encoder.init"
            yield Needed(key, source.path, folder=source.path.is_dir())


def _weights_to_read(recipe: Recipe, origins: Origins) -> Iterator[tuple[str, Path]]:
    """(key, file) of every weights file the run opens: ``init_from`` (its newest checkpoint) and the
    towers' ``init`` files; a missing ``init_from`` is a :class:`MissingCheckpointError`."""
    if recipe.init_from is not None:
        try:
            yield "init_from", find_checkpoint(recipe.init_from)
        except MissingCheckpointError as err:
            raise MissingCheckpointError(f"{_at(origins, 'init_from')}{err}; set init_from to a run folder or a "
                                         "checkpoint file (or null)") from None
    for item in weight_files(recipe):
        yield item.key, item.path


# ------------------------------------------------------------------------------------------ tokenizer
def _check_tokenizer_here(data: DataConfig, encoder: Encoder, origins: Origins) -> None:
    """The tokenizer exists here and its vocabulary fits the encoder's text embedding table."""
    folder = _tokenizer_folder(data, origins)
    if folder is None:
        return
    size = vocabulary_size(folder)
    if size is not None:
        _check_vocabulary(size, f"the tokenizer {folder}", encoder, origins)


def _check_vocabulary(size: int, tokenizer: str, encoder: Encoder, origins: Origins) -> None:
    rows = encoder.word_embeddings().num_embeddings
    if size > rows:
        raise RecipeError(f"`data.tokenizer`: {tokenizer} has {size} ids but the encoder's vocabulary has {rows} rows; "
                          "raise the encoder's vocab_size (e.g. encoder.text.vocab_size) or use a smaller tokenizer",
                          source=origins("data.tokenizer"), key="data.tokenizer")


@functools.cache
def synthetic_vocabulary_size(vocab_size: int) -> int:
    """Ids of the tokenizer the synthetic data brings for ``data.source.vocab_size`` (its vocabulary is the
    closed lexicon's, capped at ``vocab_size``), known without generating the data."""
    return len(learn_vocab(all_words(), vocab_size))


def _tokenizer_folder(data: DataConfig, origins: Origins) -> Path | None:
    """The folder the run loads its tokenizer from, when it is on this machine (None: not known before
    the run, e.g. a hub repository not yet downloaded while online, or synthetic data not yet generated)."""
    if data.tokenizer is None:
        if isinstance(data.source, SyntheticSourceConfig):
            cfg = SyntheticSource(data.source).synth_config()
            folder = dataset_dir(Path(data.source.root) if data.source.root else default_data_root(), cfg)
            return folder / "tokenizer" if is_complete(folder, cfg) else None
        return None
    source = parse_source(data.tokenizer, "text")
    if source.kind == "path":
        check_exists(Needed("data.tokenizer", source.path, folder=True), origins)
        if not any((source.path / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
            raise DataError(f"{_at(origins, 'data.tokenizer')}{source.path} holds neither tokenizer.json nor "
                            "vocab.txt; save a tokenizer there with AutoTokenizer.from_pretrained(...)"
                            ".save_pretrained(folder)")
        return source.path
    from huggingface_hub import try_to_load_from_cache

    for name in ("tokenizer.json", "vocab.txt"):
        cached = try_to_load_from_cache(source.name, name)
        if isinstance(cached, str):
            return Path(cached).parent
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES):
        raise DataError(f"{_at(origins, 'data.tokenizer')}`{source.name}` is not in the Hugging Face cache and this "
                        "process is offline (HF_HUB_OFFLINE); point data.tokenizer at a local tokenizer folder, saved "
                        f"where there is network with AutoTokenizer.from_pretrained('{source.name}')"
                        f".save_pretrained('tokenizers/{source.name.split('/')[-1]}')")
    return None


def vocabulary_size(folder: Path) -> int | None:
    """Ids of the tokenizer in ``folder``, read from ``tokenizer.json`` or ``vocab.txt`` (+ ``added_tokens.json``)
    without loading it; None when neither is readable."""
    try:
        if (folder / "tokenizer.json").is_file():
            spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            vocab = spec.get("model", {}).get("vocab", {})
            ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
            ids += [t.get("id") for t in spec.get("added_tokens", []) if isinstance(t, dict)]
            ints = [i for i in ids if isinstance(i, int)]
            return max(ints) + 1 if ints else None
        if (folder / "vocab.txt").is_file():
            with (folder / "vocab.txt").open(encoding="utf-8") as lines:
                size = sum(1 for _ in lines)
            added = folder / "added_tokens.json"
            if added.is_file():
                extra = json.loads(added.read_text(encoding="utf-8"))
                size = max([size, *(i + 1 for i in extra.values() if isinstance(i, int))])
            return size
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None  # the run's own loading reports an unreadable tokenizer
    return None


# ------------------------------------------------------------------------------------------ command line
def check_out_folder(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a run folder: an existing file there is a :class:`UserError`."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is an existing file, not a folder; give a folder (it is created if missing)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def check_checkpoint_arg(path: str | Path, flag: str = "--checkpoint") -> Path:
    """The checkpoint file ``path`` names (a file, or a run folder's newest checkpoint), its header read."""
    try:
        found = find_checkpoint(path)
    except MissingCheckpointError as err:
        raise MissingCheckpointError(f"{flag}: {err}") from None
    if (problem := weights_file_problem(found) or checkpoint_problem(found)) is not None:
        raise CheckpointError(f"{flag}: {problem}")
    return found


def checkpoint_problem(path: Path) -> str | None:
    """What keeps a readable weights file from being a vlkit checkpoint, known from its header: a
    ``.safetensors`` file without vlkit's metadata (a Hugging Face or timm file) or of a newer version."""
    if path.suffix != ".safetensors":
        return None
    metadata = release.read_metadata(path)
    if metadata.get("format") != release.FORMAT:
        return (f"{path} is a safetensors file without vlkit's metadata (format={metadata.get('format')!r}); to "
                "start a tower from it use encoder.image.init / encoder.text.init instead")
    version = metadata.get("version", "0")
    if not version.isdigit() or int(version) > release.VERSION:
        return f"{path} is vlkit weights version {version[:20]}; this vlkit reads up to {release.VERSION}"
    return None


def check_resume(out: Path, resume: bool | str) -> None:
    """``--resume`` (the run folder's newest checkpoint) or ``--resume CKPT`` names a readable checkpoint."""
    if resume is True:
        if ckpt.latest_checkpoint(out / "checkpoints") is None:
            raise MissingCheckpointError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume, "
                                         "or pass --resume CKPT")
    elif resume:
        path = Path(resume)
        if not path.is_file():
            raise MissingCheckpointError(f"--resume {path}: no such checkpoint file")
        if (problem := weights_file_problem(path)) is not None:
            raise CheckpointError(f"--resume: {problem}")
