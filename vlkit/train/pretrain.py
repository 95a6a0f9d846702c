"""Pre-training from a recipe: data source → tokenizer → model → loader → trainer → evaluation.

``run_pretraining(recipe, out_dir)`` is what ``vlkit train`` calls. Output contract: ``out_dir`` gets
``recipe.yaml`` (resolved), ``checkpoints/``, ``tb/`` (TensorBoard) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlkit import dist, provenance, registry
from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.batch import Batch
from vlkit.core.errors import CheckpointError, DataError, MissingCheckpointError, RecipeError
from vlkit.data import bad_samples
from vlkit.data.collate import PretrainCollate
from vlkit.data.json_dataset import EntryList, EpochSampler
from vlkit.data.loader_requests import batch_transforms, wants_hard_negatives
from vlkit.data.single_modality import ImageOnlyCollate, TextOnlyCollate
from vlkit.data.sources import DataSource
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import TokenizerError, load_tokenizer
from vlkit.data.tokens import TextTokens
from vlkit.data.training_set import EpochStream, TrainingRequest, TrainingSet
from vlkit.data.transforms import DeviceNormalize, decode_size, train_transform
from vlkit.encoders.base import Encoder
from vlkit.eval.runner import PretrainEvaluator
from vlkit.models.model import PretrainModel
from vlkit.nn.checkpointing import compile_blocks
from vlkit.objectives.base import ObjectiveConfig
from vlkit.recipe import Recipe
from vlkit.tasks.base import Task, TaskContext
from vlkit.train import run_folder
from vlkit.train.devices import available_cores, resolve_device, set_cpu_threads  # noqa: F401 - re-exported
from vlkit.train.distributed import init_from_environment, torchrun_scope
from vlkit.train.freeze import freeze_parameters
from vlkit.train.run_checks import check_resume, require_annotations
from vlkit.train.run_report import write_run_report
from vlkit.train.trainer import RunPaths, Trainer
from vlkit.weights import checkpoints as ckpt
from vlkit.weights.apply import tower_init_keys
from vlkit.weights.init_from import initialize_from
from vlkit.weights.sources import TowerInitError

log = logging.getLogger("vlkit.train")


class Pretraining:
    """Everything a pre-training run is built from, assembled from a validated recipe.

    Args:
        recipe: the validated recipe (with a ``data`` section).
        out_dir: the run folder.
        train_data: also read the training split and build its loader parts (off for evaluation only).
    """

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, train_data: bool = True) -> None:
        if recipe.data is None:
            raise RecipeError("the recipe has no `data` section; pre-training needs one "
                              "(e.g. data: {source: synthetic})", key="data")
        self.task: Task | None = registry.get("task", recipe.task.type).target(recipe.task) if recipe.task else None
        if not recipe.objectives and (self.task is None or not self.task.trains_own_objectives):
            raise RecipeError("the recipe has no objectives; enable at least one (e.g. objectives: {itc: {}})",
                              key="objectives")
        self.recipe, self.data = recipe, recipe.data
        self.paths = RunPaths(Path(out_dir))
        self.device = init_from_environment(resolve_device(recipe.train.device))
        self.rank, self.world = dist.rank(), dist.world_size()
        self.micro_batch = recipe.train.micro_batch(self.world)  # fails early when the batch does not split
        if self.device.type == "cpu":
            threads = set_cpu_threads(recipe.train.cpu_threads, self.data.num_workers)
            if train_data:
                log.info("CPU training with %d intra-op thread(s) and %d loader worker(s)", threads,
                         self.data.num_workers)
            else:  # evaluation (vlkit eval / retrieve): no training, no loader workers
                log.info("running on the CPU with %d intra-op thread(s)", threads)
        self.source: DataSource = registry.get("dataset", self.data.source.type).target(self.data.source)
        self.modality: str = self.data.modality or self.source.modality
        self._check_modality()
        self._prepare_source()
        self.tokenizer, self.tokens = self._tokenizer()
        self.model: PretrainModel = self._model(load_tower_weights=train_data and not recipe.init_from)
        self.transform, self.draft_size = self._image_transform()
        self.collate: Any = self._collate(train_data)
        self.training: TrainingSet | None = None
        self.annotations_skipped = 0
        if train_data:
            self._read_training_set()

    # ------------------------------------------------------------------ assembly, in order
    def _prepare_source(self) -> None:
        """The data exists locally (rank 0 first: it may generate the synthetic data)."""
        log.info("preparing data (%s)", self.data.source.type)
        if not dist.is_main():
            dist.barrier()
        self.source.prepare()
        if dist.is_main():
            dist.barrier()

    def _tokenizer(self) -> tuple[Any, TextTokens | None]:
        """The recipe's tokenizer (``data.tokenizer``, else the source's own) and its special ids."""
        reference = self.data.tokenizer or self.source.tokenizer
        if reference is None and self.modality != "image":
            raise RecipeError("set `data.tokenizer` to a BERT tokenizer folder; this data source brings none",
                              key="data.tokenizer")
        try:
            tokenizer = load_tokenizer(reference) if reference is not None else None
        except TokenizerError as err:  # a tokenizer the recipe names that cannot be loaded here
            raise DataError(" ".join(str(err).split())) from None
        return tokenizer, TextTokens.from_tokenizer(tokenizer) if tokenizer is not None else None

    def _objective_configs(self, encoder: Encoder) -> Mapping[str, ObjectiveConfig]:
        """The recipe's objectives, or its task's when the task trains its own."""
        recipe = self.recipe
        if self.task is None or not self.task.trains_own_objectives:
            return recipe.objectives
        assert recipe.task is not None
        objectives = self.task.objective_configs(self.source, self.data)
        if recipe.objectives:
            log.info("task `%s` trains %s; the recipe's objectives (%s) are not used", recipe.task.type,
                     ", ".join(objectives), ", ".join(recipe.objectives))
        if any(cfg.requires_fusion for cfg in objectives.values()) and not encoder.supports_fusion:
            raise RecipeError(f"task `{recipe.task.type}` fuses images and text; the `{recipe.encoder.type}` "
                              "encoder has no fusion layers (use an albef or mome encoder)", key="task")
        return objectives

    def _model(self, *, load_tower_weights: bool) -> PretrainModel:
        """The model at its starting weights (towers' ``init``, then ``init_from``), frozen parts frozen,
        on the device (compiled blocks with ``train.compile``)."""
        recipe = self.recipe
        torch.manual_seed(recipe.seed)
        if recipe.init_from and (towers := tower_init_keys(recipe.encoder)):
            log.info("init_from is set: the checkpoint's weights replace %s, which are not loaded", ", ".join(towers))
        encoder = build_encoder(recipe.encoder, load_weights=load_tower_weights)
        vocab = encoder.word_embeddings().num_embeddings
        if self.tokens is not None and self.tokens.vocab_size > vocab:
            raise RecipeError(f"the tokenizer has {self.tokens.vocab_size} ids but the encoder's vocabulary has "
                              f"{vocab} rows; raise the encoder's vocab_size (e.g. encoder.text.vocab_size)",
                              key="data.tokenizer")
        model = build_pretrain_model(encoder, self._objective_configs(encoder), recipe.momentum)
        self.weight_loads: list[dict[str, Any]] = self._tower_reports(encoder, recipe.strict)
        if recipe.init_from:
            report = initialize_from(model, recipe.init_from, model.init_aliases())
            self.weight_loads.append({"tower": "init_from", "source": recipe.init_from, **report.to_dict()})
            if recipe.strict and (report.new or report.reshaped or report.unused):
                raise CheckpointError(f"strict: init_from {recipe.init_from} does not account for every key: "
                                      f"{report.summary()}; set strict: false to accept that")
        if recipe.freeze:
            log.info("%s", freeze_parameters(model, recipe.freeze).summary())
        model.to(self.device)
        if recipe.train.compile:
            compiled = compile_blocks(model, recipe.train.compile_mode)
            log.info("torch.compile: %d transformer blocks (mode %s)", compiled, recipe.train.compile_mode)
        if self.rank > 0:  # identical weights on every rank; own dropout and sampling draws
            torch.manual_seed(recipe.seed + self.rank)
        return model

    def _image_transform(self) -> tuple[Callable[..., Tensor], int | None]:
        """The training image transform (augmentations of the data section) and the JPEG draft size."""
        data = self.data
        crop = (data.crop_scale[0], data.crop_scale[1]) if data.crop_scale else None
        size = self.recipe.encoder.input_size
        augment = (data.randaugment.num_ops, data.randaugment.magnitude) if data.randaugment else None
        transform = train_transform(size, None if data.normalize_on_device else data.normalize, crop_scale=crop,
                                    flip=data.flip, randaugment=augment)
        return transform, decode_size(size, crop) if data.draft_decode else None

    def _reads_hard_negatives(self) -> list[str]:
        """The recipe's objectives that ask the loader for annotated hard-negative captions."""
        return [n for n, c in self.recipe.objectives.items() if wants_hard_negatives(c.loader_requests())]

    def _collate(self, train_data: bool) -> Any:
        """The collate function of the run's batches, carrying out the objectives' loader requests (a task
        that trains its own objectives brings its own, read from its training annotations)."""
        data, recipe = self.data, self.recipe
        if train_data and self.task is not None and self.task.trains_own_objectives:
            return self.task.collate(self.tokenizer, self.source, data)
        padding = data.padding
        if recipe.train.compile and padding == "longest":  # compiled blocks need repeating shapes
            padding = "multiple_of_8"
            log.info("train.compile: text batches padded to multiples of 8 (data.padding was `longest`)")
        kind = {"pair": PretrainCollate, "text": TextOnlyCollate}.get(self.modality)
        if kind is None:
            return ImageOnlyCollate()
        collate = kind(self.tokenizer, data.max_text_len, data.drop_sep,
                       batch_transforms(self.model.loader_requests(), self.tokens), seed=recipe.seed,
                       clean=CaptionCleaner(data.pre_caption, data.max_words), padding=padding)
        collate.hard_negatives = bool(self._reads_hard_negatives()) and kind is PretrainCollate
        return collate

    def _read_training_set(self) -> None:
        """The training samples: the task's, else what the data source builds for this run."""
        data, recipe = self.data, self.recipe
        if self.task is not None and self.task.trains_own_objectives:
            self.training = TrainingSet(dataset=self.task.train_dataset(
                self.source, data, self.transform, seed=recipe.seed, draft_size=self.draft_size))
            return
        self.training = self.source.training_set(TrainingRequest(
            modality=self.modality, split=data.train_split, transform=self.transform, seed=recipe.seed,
            rank=self.rank, world_size=self.world, draft_size=self.draft_size, max_bad_fraction=data.max_bad_fraction,
            group_batches=data.group_batches, bad_samples=self.paths.out / bad_samples.FILE_NAME,
            batch_size=recipe.train.batch_size, micro_batch=self.micro_batch, num_workers=data.num_workers))
        self.annotations_skipped = self.training.annotations_skipped
        if self.training.description:
            log.info("%s of `%s`", self.training.description, data.source.type)
        require_annotations(recipe.objectives, self.training.entries, data.train_split)  # before any training
        if (reads_negatives := self._reads_hard_negatives()) and self.modality == "pair":
            self._log_hard_negatives(reads_negatives[0], self.training.entries, data.train_split)

    @staticmethod
    def _log_hard_negatives(objective: str, entries: EntryList | None, split: str) -> None:
        """How many training entries list annotated hard-negative captions (a warning when none can)."""
        if entries is None:
            log.warning("objectives.%s.hard_negatives: these samples (a shard stream) carry no annotated "
                        "hard-negative captions; those ITM pairs are left out", objective)
            return
        with_negatives = sum(any(e.hard_negatives or ()) for e in entries.entries)
        log.log(logging.INFO if with_negatives else logging.WARNING,
                "objectives.%s.hard_negatives: %d of %d `%s` entries list hard-negative captions%s",
                objective, with_negatives, len(entries.entries), split,
                "" if with_negatives else " (docs/data.md says how); those ITM pairs are left out")

    @staticmethod
    def _tower_reports(encoder: Encoder, strict: bool) -> list[dict[str, Any]]:
        """The tower ``init`` reports, once the objectives' heads have taken the weights held for them
        (weights held for a head no objective builds become unused); under ``strict``, unused weights
        are an error."""
        untaken = encoder.drop_untaken_head_weights()
        for report in encoder.init_reports:
            if untaken and report.held:
                report.unused.extend(report.held)
                report.notes.append(f"no objective builds the {', '.join(untaken)} head: its weights are unused")
                report.held.clear()
            log.info("%s", report.summary())
            if strict and report.unused:
                raise TowerInitError(f"strict: {report.tower} left {len(report.unused)} checkpoint weights unused "
                                     f"({', '.join(report.unused[:5])}); set strict: false to accept that")
        return [report.to_dict() for report in encoder.init_reports]

    def _check_modality(self) -> None:
        """Before anything heavy: the data's modality fits the source and every objective."""
        recipe, source = self.recipe, self.source
        if source.modality != "pair" and self.modality != source.modality:
            raise RecipeError(f"data.source `{self.data.source.type}` holds {source.modality}s only; "
                              f"data.modality `{self.modality}` needs a source with {self.modality}s",
                              key="data.modality")
        if self.task is not None and self.task.trains_own_objectives:
            assert recipe.task is not None
            if self.modality != "pair":
                raise RecipeError(f"task `{recipe.task.type}` trains on image-text pairs; data.modality is "
                                  f"`{self.modality}`", key="data.modality")
            return
        for name, cfg in recipe.objectives.items():
            if self.modality not in cfg.modalities:
                wants = " or ".join(f"{m}-only" if m != "pair" else "image-text pair" for m in sorted(cfg.modalities))
                raise RecipeError(f"objective `{name}` ({cfg.type}) learns from {wants} batches, but this run's data "
                                  f"gives {self.modality}{'s' if self.modality == 'pair' else '-only batches'} "
                                  "(data.modality / data.source); remove the objective or change the data",
                                  key=f"objectives.{name}")

    def _stream_batches(self, stream: EpochStream, start: int) -> Iterator[Batch]:
        """Endless micro-batches from a shard stream, epoch after epoch (epochs of ``epoch_samples``); a
        resume continues at ``start``'s epoch with fresh draws, not a replay. An epoch that yields no full
        micro-batch (its readable samples are fewer than one per reader) stops the run instead of looping."""
        data = self.data
        epoch = start // stream.epoch_samples
        while True:
            stream.set_epoch(epoch)
            produced = 0
            for batch in torch.utils.data.DataLoader(
                    stream, batch_size=self.micro_batch, collate_fn=self.collate,
                    num_workers=data.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
                    prefetch_factor=4 if data.num_workers else None):
                produced += 1
                yield batch
            if not produced:
                raise DataError(f"epoch {epoch} of the shard stream yielded no full batch of {self.micro_batch} "
                                f"samples; too few of its samples are readable (see {self.paths.out}/"
                                f"{bad_samples.FILE_NAME}) or data.num_workers splits them too thin")
            epoch += 1

    def batches(self, start: int) -> Iterator[Batch]:
        """Micro-batches from sample ``start`` on (deterministic: keys, captions, crops, masks)."""
        data, training = self.data, self.training
        if training is None:
            raise RuntimeError("this run was assembled without training data (train_data=False)")
        if training.stream is not None:
            return self._stream_batches(training.stream, start)
        dataset, entries = training.dataset, training.entries
        assert isinstance(dataset, Sized)
        groups = [e.group for e in entries.entries] if data.group_batches and entries is not None else None
        parts, ratios = (entries.part_of, entries.ratios) if entries is not None else (None, None)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.micro_batch,
            sampler=EpochSampler(len(dataset), self.recipe.seed, start=start, groups=groups, parts=parts,
                                 ratios=ratios, rank=self.rank, world_size=self.world, block=self.micro_batch),
            collate_fn=self.collate,
            num_workers=data.num_workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(self.recipe.seed),  # keeps the global RNG untouched
            prefetch_factor=4 if data.num_workers else None, persistent_workers=False)
        return iter(loader)

    def task_context(self) -> TaskContext:
        """What the recipe's task evaluates with: the online encoder and the objectives' heads."""
        return TaskContext(self.model.encoder, self.model.heads(), self.source, self.tokenizer, self.data,
                           self.recipe.eval, self.recipe.encoder.input_size, self.device,
                           out_dir=self.paths.out if dist.is_main() else None,  # rank 0 writes task files
                           objectives=dict(self.model.objective_list()))

    def evaluator(self) -> Callable[[], dict[str, float]] | None:
        """The end-of-training evaluation: the task's, else retrieval and the swap probe on
        ``eval.split`` (None when the source has no such split)."""
        if self.task is not None:
            task, ctx = self.task, self.task_context()
            return lambda: task.evaluate(ctx)
        if self.modality != "pair":
            log.info("no evaluation: %s-only training (evaluate a later image-text stage instead)", self.modality)
            return None
        try:
            self.source.split_files(self.recipe.eval.split)
        except ValueError as err:
            log.warning("no evaluation: %s", err)
            return None
        return PretrainEvaluator(self.model.encoder, self.model.match_head(), self.source, self.tokenizer,
                                 self.data, self.recipe.eval, self.recipe.encoder.input_size, self.device)

    def trainer(self, progress: bool = True) -> Trainer:
        return Trainer(self.model, self.recipe.train, self.batches, self.device, self.paths, self.recipe.to_yaml(),
                       evaluate=self.evaluator(), progress=progress, max_bad_fraction=self.data.max_bad_fraction,
                       on_device=DeviceNormalize(self.data.normalize) if self.data.normalize_on_device
                       else None)


def run_pretraining(recipe: Recipe, out_dir: str | Path, *, resume: bool | str | Path = False,
                    progress: bool = True, overwrite: bool = False, name: str | None = None) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir`` and write ``metrics.json``; returns the metrics (``metrics.json``
    also holds their ``provenance``, :mod:`vlkit.provenance`).

    The run holds ``out_dir`` for its whole length (:mod:`vlkit.train.run_folder`: a second run there
    fails at once, naming the holder).

    Args:
        resume: ``True`` continues from the newest checkpoint in ``out_dir/checkpoints`` (an error if
            there is none), a path continues from that checkpoint, ``False`` starts fresh. The recipe
            must be the run's, but for keys that do not change the numbers
            (:data:`vlkit.train.run_checks.MAY_CHANGE_ON_RESUME`).
        overwrite: start fresh in a folder that holds a run, deleting that run's files (without it, and
            without ``resume``, such a folder is refused).
        name: the recipe as the user named it (``albef/tiny``, a file), for ``report.md``; None: the
            report looks for the shipped recipe with the same description.

    Raises:
        RunFolderBusy: another process holds ``out_dir``.
        RunFolderTaken: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` was given.
        ResumeMismatch: ``resume`` with a recipe that changes the model, the data or the schedule.
        MissingAnnotations: an objective reads annotations the training data does not have.
        NonFiniteError: training diverged (:class:`vlkit.train.trainer.NonFiniteLoss`).
    """
    started = time.perf_counter()
    with torchrun_scope():
        out = Path(out_dir)
        init_from_environment(resolve_device(recipe.train.device))  # the ranks agree on the folder checks
        with run_folder.locked(out, "vlkit train"):
            run_folder.agreed(lambda: run_folder.claim_for_training(out, resume=bool(resume), overwrite=overwrite))
            start = ckpt.latest_checkpoint(RunPaths(out).checkpoints) if resume is True else \
                Path(resume) if resume else None
            if start is not None and start.is_file():
                check_resume(ckpt.stored_recipe(start), recipe, start, out)
            return _run(recipe, out_dir, resume=resume, progress=progress, name=name, started=started)


def _run(recipe: Recipe, out_dir: str | Path, *, resume: bool | str | Path, progress: bool, name: str | None,
         started: float) -> dict[str, Any]:
    run = Pretraining(recipe, out_dir)
    if dist.is_main() and run.weight_loads:  # what every weight load took, left new and left unused
        run.paths.out.mkdir(parents=True, exist_ok=True)
        (run.paths.out / "weights_report.json").write_text(json.dumps(run.weight_loads, indent=2) + "\n")
    start = None
    if resume is True:
        start = ckpt.latest_checkpoint(run.paths.checkpoints)
        if start is None:
            raise MissingCheckpointError(f"--resume: no checkpoint in {run.paths.checkpoints}; start without --resume, "
                                         "or pass --resume CKPT")
    elif resume:
        start = Path(resume)
    trainer = run.trainer(progress=progress)
    metrics: dict[str, Any] = dict(trainer.fit(resume=start))
    metrics.update(encoder_parameters=sum(p.numel() for p in run.model.encoder.parameters()),
                   steps=trainer.step, samples=trainer.samples, images_skipped=trainer.skipped,
                   annotations_skipped=run.annotations_skipped)
    bad = bad_samples.summarize(run.paths.out / bad_samples.FILE_NAME)
    metrics["bad_samples"] = bad.samples
    metrics["wall_s"] = round(time.perf_counter() - started, 1)  # this session: resumed runs count their last part
    if dist.is_main():
        if bad.samples or bad.phases:
            log.warning("%s", bad.line())
        record = provenance.record(
            recipe_yaml=recipe.to_yaml(), seed=recipe.seed, step=trainer.step, device=run.device, world_size=run.world,
            eval_data=provenance.evaluation_data(recipe, run.source, metrics) if trainer.evaluate is not None else None)
        ckpt.write_text_atomic(run.paths.metrics, json.dumps({**metrics, "provenance": record}, indent=2,
                                                             sort_keys=True) + "\n")
        write_run_report(run.paths.out, metrics, recipe.description, provenance=record, name=name)
    return metrics
