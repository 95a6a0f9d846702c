"""The ``vlkit`` command line.

Commands::

    vlkit train RECIPE [KEY=VALUE ...] --out DIR [--resume [CKPT] | --overwrite]   pre-train (exit 3: non-finite
                                               loss, 4: malformed data, 130/143: interrupted, checkpoint saved)
    vlkit finetune RECIPE [KEY=VALUE ...] --out DIR [--resume [CKPT] | --overwrite]   fine-tune a downstream task
                                               (the recipe's `task`, usually with `init_from`)
    vlkit eval RECIPE [KEY=VALUE ...] --checkpoint CKPT|RUN_DIR --out DIR [--overwrite]
                                               the recipe's evaluation of a checkpoint → DIR/metrics.json
                                               (exit 2 also for a checkpoint that does not fit the recipe)
    vlkit retrieve RECIPE --checkpoint CKPT [--image IMG | --image-index N] [--text T] [--plus T] [--minus T]
                   --out SHEET.png             composed-query image retrieval → contact sheet + JSON
    vlkit bench RECIPE [KEY=VALUE ...] --out DIR [--steps N] [--batch-size B] [--warmup W] [--text-len L]
                [--peak-tflops P] [--sweep | --flops-only]   training throughput on synthetic batches →
                                               DIR/bench.json, bench.md (--flops-only: FLOPs on the meta device)
    vlkit ablate GRID --out DIR                run a grid of recipe variants × seeds (finished runs skipped)
                                               → DIR/results.md, results.csv, PNG plots
    vlkit ablate --report DIR                  redraw the report from the finished runs
    vlkit data synth --out DIR [KEY=VALUE ...] generate the embedded synthetic dataset
    vlkit data pack ANN.json... --image-root R --out DIR [--resize-short S]   JSON → webdataset shards
    vlkit data filter ANN.json... --image-root R --out DIR [--eval EVAL.json...]   ALIGN's noisy-data
                                               filters → filtered JSON lists + filter_report.json
    vlkit convert albef|vlmo CKPT [KEY=VALUE ...] --out DIR [--recipe R] [--layout L] [--to official]
                                               official ALBEF / VLMo checkpoint → DIR/checkpoints/ (init_from: DIR),
                                               every key accounted for in DIR/conversion.md (and back: --to official)
    vlkit recipes list                         shipped recipes, one line each
    vlkit recipes show RECIPE [KEY=VALUE ...]  the resolved recipe, checked as `train` would check it before
                                               starting (exit 2 on a problem)
        [--params]                             ... and parameter counts per part
        [--no-machine-checks]                  ... without the checks of this machine's files and devices
    vlkit registry [KIND] [--import MODULE ...] [--recipe R]   what is registered, per swap point (with
                                               your plug-ins: the modules named, or the recipe's `imports:`)

A recipe is a file path or a shipped name (``albef/tiny``). Overrides are dotted keys with YAML
values: ``train.lr=3e-4``, ``objectives.mlm=null``, ``encoder.size=base``; they may come anywhere after
the command's own arguments, before or after its options (``vlkit train R --no-progress train.lr=3e-4``),
and apply in the order given. After an option, a word with ``=`` is read as an override (a malformed key
is named as such); any other word, and an unknown ``--option``, is argparse's "unrecognized arguments".

Exit status (docs/reliability.md): 0 done; 2 a problem the user can fix (one line ``error: ...`` naming the
key or file and the fix, before anything heavy starts where it can be known then), also a full disk; 3 a
non-finite loss or weights; 4 malformed data found while reading it; 130 / 143 interrupted by Ctrl-C /
SIGTERM. Any other failure is a bug in vlkit and shows its traceback.
"""

from __future__ import annotations

import argparse
import collections
import errno
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlkit import registry
from vlkit.core.errors import NonFiniteError, RecipeError, UserError

EXIT_USER_ERROR = 2  # anything a user can fix: a recipe key, a file, a flag (and a full disk)
EXIT_RECIPE_ERROR = EXIT_USER_ERROR
EXIT_NONFINITE = 3
EXIT_DATA_ERROR = 4  # malformed annotations or too many unreadable images (data.max_bad_fraction)
EXIT_INTERRUPTED = 130  # Ctrl-C outside training (training: 128 + the signal, after a checkpoint)


OVERRIDES_HELP = ("dotted overrides with YAML values, e.g. train.lr=3e-4 objectives.mlm=null; anywhere after the "
                  "command's arguments, before or after options, applied in the order given")

_CAPTURED = "_overrides_after_options"
"""Namespace field: overrides that a list option (or ``--resume``'s optional value) took as its values."""


def _is_override(text: str) -> bool:
    from vlkit.recipe import is_override

    return is_override(text)


def _capture(namespace: argparse.Namespace, overrides: list[str]) -> None:
    vars(namespace).setdefault(_CAPTURED, []).extend(overrides)


class _ValuesThenOverrides(argparse.Action):
    """A list option (``nargs="+"``) whose values are read with ``item``; the ``KEY=VALUE`` words after them
    (argparse hands a list option every following word) are overrides, not values."""

    def __init__(self, *args: Any, item: Callable[[str], Any] = str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item = item

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        words = [values] if isinstance(values, str) else list(values or [])
        overrides = [w for w in words if _is_override(w)]
        items = []
        for word in words:
            if word in overrides:
                continue
            try:
                items.append(self.item(word))
            except ValueError:
                raise argparse.ArgumentError(self, f"invalid {self.item.__name__} value: {word!r}") from None
        if not items:
            raise argparse.ArgumentError(self, "expected at least one value")
        _capture(namespace, overrides)
        vars(namespace)[self.dest] = items


class _ResumeFrom(argparse.Action):
    """``--resume [CKPT]``: a ``KEY=VALUE`` after it that is not a file is an override, and the run resumes
    from the newest checkpoint."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if isinstance(values, str) and _is_override(values) and not Path(values).exists():
            _capture(namespace, [values])
            values = True
        vars(namespace)[self.dest] = values


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe file, or a shipped name such as albef/tiny")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def _cmd_recipes_list(args: argparse.Namespace) -> int:
    from vlkit.recipe import list_recipes, shipped_recipes_dir

    rows = list_recipes()
    width = max((len(name) for name, _ in rows), default=0)
    print(f"shipped recipes ({shipped_recipes_dir()}):")
    for name, description in rows:
        print(f"  {name:<{width}}  {description}")
    return 0


def _cmd_recipes_show(args: argparse.Namespace) -> int:
    from vlkit.checks import check_machine, check_recipe
    from vlkit.recipe import resolve

    resolved = resolve(args.recipe, args.overrides)
    encoder = check_recipe(resolved.recipe, resolved.origins)
    if not args.no_machine_checks:
        try:
            check_machine(resolved.recipe, resolved.origins, encoder)
        except UserError as err:  # the same error, with the way to show a recipe meant for another machine
            raise UserError(f"{err} (--no-machine-checks shows the recipe without checking this machine)") from None
    print(f"# resolved from: {' <- '.join(reversed(resolved.sources))}")
    print(resolved.recipe.to_yaml(), end="")
    if args.params:
        from vlkit.build import format_report, parameter_report

        print()
        print(format_report(parameter_report(_online_parts(resolved.recipe))))
    return 0


def _online_parts(recipe: Any) -> dict[str, list[Any]]:
    """The online model's parameter groups: the encoder's parts, then each objective's own modules
    (heads, temperature; weights tied to the encoder are counted once, with the encoder). Built on the
    meta device, so nothing is allocated; the momentum teacher is a copy and is not counted."""
    import torch

    from vlkit.build import build_encoder, build_objectives

    encoder = build_encoder(recipe.encoder, device="meta")
    with torch.device("meta"):
        objectives = build_objectives(recipe.objectives, encoder)
    parts: dict[str, list[Any]] = dict(encoder.parts())
    for name, objective in objectives.items():
        parts[f"objective {name}"] = [objective]
    return parts


def _cmd_train(args: argparse.Namespace) -> int:
    from vlkit.checks import check_before_work, check_out_folder, check_resume
    from vlkit.data.json_dataset import AnnotationError
    from vlkit.recipe import resolve
    from vlkit.train import run_folder
    from vlkit.train.pretrain import run_pretraining
    from vlkit.train.trainer import Interrupted, NonFiniteLoss, TooManyBadSamples

    resolved = resolve(args.recipe, args.overrides)  # all recipe errors surface here, before any work
    recipe = resolved.recipe
    if args.command == "finetune" and recipe.task is None:
        raise RecipeError("`vlkit finetune` needs a recipe with a `task` section (e.g. task: {type: ve}); "
                          "shipped ones are under recipes/finetune/", key="task")
    if recipe.data is None:
        raise RecipeError(f"the recipe has no `data` section; `vlkit {args.command}` needs one "
                          "(e.g. data: {source: synthetic})", key="data")
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).with_suffix("").as_posix().replace("/", "-")
    check_out_folder(out)
    resume: bool | str = args.resume if args.resume is not None else False
    run_folder.check_claim(out, resume=bool(resume), overwrite=args.overwrite)
    check_resume(out, resume)
    check_before_work(recipe, resolved.origins)  # data files, tokenizer, init_from, freeze: before the data is read
    if args.command == "finetune" and recipe.init_from is None:
        logging.getLogger("vlkit").warning("init_from is not set: fine-tuning starts from random weights "
                                           "(pass init_from=RUN_DIR to start from a pre-trained run)")
    try:
        metrics = run_pretraining(recipe, out, resume=resume, progress=not args.no_progress, overwrite=args.overwrite,
                                  name=args.recipe)
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except (AnnotationError, TooManyBadSamples) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except Interrupted as err:
        if int(os.environ.get("RANK", "0")) == 0:
            launcher = "torchrun [same options] -m vlkit" if "WORLD_SIZE" in os.environ else "vlkit"
            again = shlex.join(resume_command(args.command_line, args.resume))
            print(f"{err}; continue with: {launcher} {again}", file=sys.stderr)
        return 128 + err.signum
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nfinished: {out}")
        _print_metrics(metrics)
    return 0


def resume_command(argv: Sequence[str], resumed_from: bool | str | None) -> list[str]:
    """The command line that continues an interrupted run: ``argv`` (the words after ``vlkit``) as the user
    gave them, without ``--overwrite`` (it would delete the checkpoint) or an earlier ``--resume [CKPT]``,
    and with ``--resume`` (the newest checkpoint of the same run folder) at the end. Shell-quote it
    (``shlex.join``): an override may hold spaces, braces or brackets."""
    words: list[str] = []
    skip_value = False
    for word in argv:
        if skip_value:
            skip_value = False
            if word == resumed_from:  # --resume CKPT: the checkpoint it continued from
                continue
        name = word.partition("=")[0]
        if len(name) >= 4 and "--overwrite".startswith(name):
            continue
        if len(name) >= 3 and "--resume".startswith(name):  # argparse accepts --res, --resume=CKPT
            skip_value = "=" not in word
            continue
        words.append(word)
    return [*words, "--resume"]


def _print_metrics(metrics: dict[str, Any]) -> None:
    width = max((len(k) for k in metrics), default=0)
    for key in sorted(metrics):
        value = metrics[key]
        print(f"  {key:<{width}}  {value:.2f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from vlkit.checks import check_before_work, check_checkpoint_arg, check_out_folder
    from vlkit.data.json_dataset import AnnotationError
    from vlkit.eval.checkpoint_eval import CheckpointMismatch, run_evaluation
    from vlkit.recipe import resolve

    resolved = resolve(args.recipe, args.overrides)
    recipe = resolved.recipe
    if recipe.data is None:
        raise RecipeError("the recipe has no `data` section; `vlkit eval` needs one to evaluate on", key="data")
    check_out_folder(args.out)
    check_checkpoint_arg(args.checkpoint)
    check_before_work(recipe, resolved.origins)
    try:
        metrics = run_evaluation(recipe, args.checkpoint, args.out, overwrite=args.overwrite)
    except (CheckpointMismatch, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RECIPE_ERROR
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA_ERROR
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nevaluated {metrics['checkpoint']} → {Path(args.out) / 'metrics.json'}")
        _print_metrics(metrics)
    return 0


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from vlkit.checks import check_checkpoint_arg
    from vlkit.eval.checkpoint_eval import CheckpointMismatch
    from vlkit.eval.retrieve import Query, run_retrieval_query
    from vlkit.recipe import resolve

    recipe = resolve(args.recipe, args.overrides).recipe
    check_checkpoint_arg(args.checkpoint)
    query = Query(image=Path(args.image) if args.image else None, image_index=args.image_index,
                  plus=[*args.text, *args.plus], minus=list(args.minus))
    if query.image is None and query.image_index is None and not query.plus:
        raise UserError("give a query: --image / --image-index and/or --text / --plus")
    try:
        results = run_retrieval_query(recipe, args.checkpoint, query, Path(args.out), top=args.top,
                                      gallery_folder=Path(args.gallery) if args.gallery else None)
    except (CheckpointMismatch, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RECIPE_ERROR
    print(f"query {query.describe()}: top {len(results)} of the gallery → {args.out} (and .json)")
    for item in results[:5]:
        print(f"  #{item['rank']}  {item['score']:.3f}  {item['image']}")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from vlkit.checks import check_out_folder
    from vlkit.data.synthetic import SynthConfig, generate
    from vlkit.recipe import parse_override
    from vlkit.schema import validate

    settings: dict = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        settings[".".join(keys)] = value
    cfg = validate(SynthConfig, settings, lambda path: "command line")
    check_out_folder(args.out)
    summary = generate(args.out, cfg, workers=args.workers)
    print(f"wrote {summary.out_dir} in {summary.seconds:.1f} s (vocabulary {summary.vocab_size})")
    for name, count in sorted(summary.counts.items()):
        print(f"  {name:<24} {count}")
    return 0


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from vlkit.checks import check_out_folder
    from vlkit.data.tools.pack import pack_json_dataset

    check_out_folder(args.out)
    missing = [f for f in args.annotations if not Path(f).is_file()]
    if missing:
        print(f"error: annotation files not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    report = pack_json_dataset([Path(f) for f in args.annotations], Path(args.image_root), Path(args.out),
                               shard_size=args.shard_size, resize_short=args.resize_short, quality=args.quality,
                               prefix=args.prefix)
    print(f"wrote {report.samples} samples in {len(report.shards)} shards: {report.pattern}")
    if report.skipped:
        print(f"skipped {report.skipped} (first: {', '.join(map(str, report.skipped_paths[:5]))}); "
              f"see {Path(args.out) / 'pack_report.json'}")
    return 0


def _cmd_data_filter(args: argparse.Namespace) -> int:
    from vlkit.checks import check_out_folder
    from vlkit.data.json_dataset import AnnotationError
    from vlkit.data.tools.filtering import FilterRules, filter_json_dataset

    check_out_folder(args.out)
    missing = [f for f in [*args.annotations, *args.eval] if not Path(f).is_file()]
    if missing:
        print(f"error: annotation files not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_DATA_ERROR
    try:
        rules = FilterRules(min_short_side=args.min_short_side, max_aspect=args.max_aspect,
                            max_images_per_text=args.max_images_per_text, min_words=args.min_words,
                            max_words=args.max_words, dup_distance=args.dup_distance)
        report = filter_json_dataset([Path(f) for f in args.annotations], Path(args.image_root), Path(args.out),
                                     rules, eval_files=[Path(f) for f in args.eval],
                                     eval_image_root=Path(args.eval_image_root) if args.eval_image_root else None,
                                     workers=args.workers)
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(report.summary())
    print(f"wrote {', '.join(f['output'] for f in report.files)} and {Path(args.out) / 'filter_report.json'}")
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    if args.kind and args.kind not in registry.KINDS:
        suggestion = registry.did_you_mean(args.kind, registry.KINDS)
        raise registry.RegistryError(f"unknown registry kind `{registry.shown(args.kind)}`{suggestion}")
    registry.load_builtins()
    registry.import_plugins(args.imports, named_in="given to --import")
    if args.recipe:
        from vlkit.recipe import import_recipe_plugins, resolve_raw

        data, origins, _ = resolve_raw(args.recipe)  # its plug-ins only: the recipe need not validate here
        import_recipe_plugins(data, origins)
    entries = list(registry.entries())
    for kind in kinds:
        rows = [e for e in entries if e.kind == kind]
        print(f"{kind}:")
        if not rows:
            print("  (none)")
        width = max((len(e.name) for e in rows), default=0)
        for entry in rows:
            print(f"  {entry.name:<{width}}  {entry.description}  [{entry.module}]")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from vlkit.ablate.grid import GridError, load_grid
    from vlkit.ablate.report import write_report
    from vlkit.ablate.runner import run_grid
    from vlkit.checks import check_out_folder
    from vlkit.train.trainer import Interrupted

    if args.report:
        if not (Path(args.report) / "grid.json").is_file():
            raise UserError(f"{args.report} holds no ablation (no grid.json)")
        print(write_report(Path(args.report)))
        return 0
    if not args.grid or not args.out:
        raise UserError("give a grid file and --out DIR (or --report DIR)")
    check_out_folder(args.out)
    try:
        grid = load_grid(args.grid)  # every variant validated before any training
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RECIPE_ERROR
    try:
        table = run_grid(grid, Path(args.out), progress=not args.no_progress)
    except Interrupted as err:  # as `vlkit train`: the run saved a checkpoint; the same command resumes it
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{err}; continue with: vlkit {shlex.join(args.command_line)} (finished runs are skipped, "
                  "this one resumes)", file=sys.stderr)
        return 128 + err.signum
    print(table)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from vlkit.bench.command import run_bench_command
    from vlkit.checks import check_out_folder

    check_out_folder(args.out)
    return run_bench_command(args)


def _cmd_convert(args: argparse.Namespace) -> int:
    from vlkit.checks import check_out_folder
    from vlkit.convert import ConversionError, UnsafeCheckpoint, official_to_vlkit, vlkit_to_official

    check_out_folder(args.out)
    try:
        if args.to == "official":
            done = vlkit_to_official(args.family, args.checkpoint, args.out, recipe=args.recipe,
                                     overrides=args.overrides, layout=args.layout)
        else:
            done = official_to_vlkit(args.family, args.checkpoint, args.out, recipe=args.recipe,
                                     overrides=args.overrides, layout=args.layout)
    except (ConversionError, UnsafeCheckpoint, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RECIPE_ERROR
    print(done.accounting.summary())
    print(f"wrote {done.path}; the full accounting is in {Path(args.out) / 'conversion.md'}")
    return 0


_GRID_FORMAT = "(the grid file format: vlkit.ablate.grid.GRID_FORMAT_HELP)"


class _GridFormatHelp(argparse.RawDescriptionHelpFormatter):
    """``vlkit ablate --help``: the epilog is :data:`vlkit.ablate.grid.GRID_FORMAT_HELP`, imported only when
    the help is shown (that module loads the recipe schema and torch: seconds for every other command)."""

    def add_text(self, text: str | None) -> None:
        if text == _GRID_FORMAT:
            from vlkit.ablate.grid import GRID_FORMAT_HELP

            text = GRID_FORMAT_HELP
        super().add_text(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description="Vision-language pre-training toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipes = commands.add_parser("recipes", help="list, resolve and check recipes")
    recipe_commands = recipes.add_subparsers(dest="recipes_command", required=True, metavar="SUBCOMMAND")
    listing = recipe_commands.add_parser("list", help="shipped recipes with a one-line description")
    listing.set_defaults(func=_cmd_recipes_list)
    show = recipe_commands.add_parser("show", help="print the resolved recipe, checked as `vlkit train` would check "
                                      "it before starting (exit 2 on a problem)")
    _add_recipe_args(show)
    show.add_argument("--params", action="store_true", help="also report parameter counts per part")
    show.add_argument("--no-machine-checks", action="store_true",
                      help="skip the checks of this machine (data files, tokenizer, init_from, devices): for a "
                      "recipe meant to run elsewhere")
    show.set_defaults(func=_cmd_recipes_show)

    for name, help_text in (("train", "pre-train a recipe"),
                            ("finetune", "fine-tune a downstream task (a recipe with `task`)")):
        run = commands.add_parser(name, help=help_text)
        _add_recipe_args(run)
        run.add_argument("--out", help="run folder (default: runs/<recipe>)")
        run.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT", action=_ResumeFrom,
                         help="continue from the newest checkpoint in --out (or from CKPT)")
        run.add_argument("--overwrite", action="store_true",
                         help="start afresh in an --out that holds a run, deleting that run's files")
        run.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
        run.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint with a recipe's evaluation")
    _add_recipe_args(evaluate)
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT",
                          help="a checkpoint file, or a run folder (its newest checkpoint)")
    evaluate.add_argument("--out", required=True, help="folder for metrics.json and the resolved recipe")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace the metrics.json / recipe.yaml --out already holds")
    evaluate.set_defaults(func=_cmd_eval)

    bench = commands.add_parser("bench", help="training throughput, FLOPs and MFU on synthetic batches")
    _add_recipe_args(bench)
    bench.add_argument("--out", required=True, help="folder for bench.json and bench.md (and the sweep's files)")
    bench.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    bench.add_argument("--batch-size", type=int, default=None, help="per device (default: the recipe's batch_size)")
    bench.add_argument("--text-len", type=int, default=None, help="every caption this long (default: a "
                       "realistic caption-length histogram)")
    bench.add_argument("--profile-steps", type=int, default=3, help="steps profiled for the breakdown (0: none)")
    bench.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: measured)")
    bench.add_argument("--flops-only", action="store_true", help="count executed vs reference FLOPs per sample on "
                       "the meta device (any model size, seconds) → DIR/flops.json")
    bench.add_argument("--sweep", action="store_true", help="attention backends × batch sizes × text lengths, "
                       "with plots")
    bench.add_argument("--sweep-batch-sizes", nargs="+", default=None, metavar="B", action=_ValuesThenOverrides,
                       item=int)
    bench.add_argument("--sweep-text-lens", nargs="+", default=None, metavar="L", action=_ValuesThenOverrides,
                       item=int)
    bench.add_argument("--sweep-backends", nargs="+", default=None, metavar="NAME", action=_ValuesThenOverrides)
    bench.set_defaults(func=_cmd_bench)

    ablate = commands.add_parser("ablate", help="run a grid of recipe variants and compare them (table + plots)",
                                 description="Train every variant × seed of a grid file, then compare them "
                                 "(tables and plots in DIR).",
                                 epilog=_GRID_FORMAT, formatter_class=_GridFormatHelp)
    ablate.add_argument("grid", nargs="?", help="the grid file (YAML), e.g. recipes/ablations/albef_objectives.yaml")
    ablate.add_argument("--out", help="folder for the runs and the report")
    ablate.add_argument("--report", metavar="DIR", help="only redraw DIR's report from its finished runs")
    ablate.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    ablate.set_defaults(func=_cmd_ablate)

    retrieve = commands.add_parser("retrieve", help="composed-query image retrieval → PNG contact sheet")
    _add_recipe_args(retrieve)
    retrieve.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint file or a run folder")
    retrieve.add_argument("--image", help="query image file")
    retrieve.add_argument("--image-index", type=int, default=None, metavar="N",
                          help="use the gallery's N-th image as the query image")
    retrieve.add_argument("--text", action="append", default=[], help="query text (added to the query)")
    retrieve.add_argument("--plus", action="append", default=[], metavar="TEXT", help="add a text embedding")
    retrieve.add_argument("--minus", action="append", default=[], metavar="TEXT", help="subtract a text embedding")
    retrieve.add_argument("--gallery", help="a folder of images (default: the recipe's eval.split images)")
    retrieve.add_argument("--top", type=int, default=16, help="results shown")
    retrieve.add_argument("--out", required=True, help="the contact sheet (.png); the results go beside it (.json)")
    retrieve.set_defaults(func=_cmd_retrieve)

    data = commands.add_parser("data", help="datasets: generate the synthetic data, pack shards, filter web data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = data_commands.add_parser("synth", help="generate the embedded shapes-world dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--workers", type=int, default=1, help="rendering processes")
    synth.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="generation settings, e.g. seed=1 "
                       "(before or after the options)")
    synth.set_defaults(func=_cmd_data_synth)
    pack = data_commands.add_parser("pack", help="convert ALBEF-style JSON + images into webdataset tar shards")
    pack.add_argument("annotations", nargs="+", help="ALBEF-style JSON annotation files")
    pack.add_argument("--image-root", required=True, help="folder the annotations' image paths are relative to")
    pack.add_argument("--out", required=True, help="output folder for the shards")
    pack.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    pack.add_argument("--resize-short", type=int, default=None, metavar="S",
                      help="downscale so the short side is at most S (never upscales); the cheap-loading default")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    pack.add_argument("--prefix", default="shard", help="shard file prefix")
    pack.set_defaults(func=_cmd_data_pack)
    filt = data_commands.add_parser("filter", help="ALIGN's noisy web-data filters on ALBEF-style JSON + images")
    filt.add_argument("annotations", nargs="+", help="ALBEF-style JSON annotation files")
    filt.add_argument("--image-root", required=True, help="folder the annotations' image paths are relative to")
    filt.add_argument("--out", required=True, help="output folder: filtered lists (same names) and the report")
    filt.add_argument("--min-short-side", type=int, default=200, help="drop images whose short side is smaller")
    filt.add_argument("--max-aspect", type=float, default=3.0, help="drop images with a larger long/short ratio")
    filt.add_argument("--max-images-per-text", type=int, default=10,
                      help="drop captions shared by more distinct images")
    filt.add_argument("--min-words", type=int, default=3, help="drop captions with fewer words")
    filt.add_argument("--max-words", type=int, default=20, help="drop captions with more words")
    filt.add_argument("--eval", nargs="*", default=[], metavar="EVAL.json",
                      help="evaluation annotations: drop near-duplicates of their images")
    filt.add_argument("--eval-image-root", default=None, help="image folder of --eval (default: --image-root)")
    filt.add_argument("--dup-distance", type=int, default=4,
                      help="pHash Hamming distance (of 64 bits) that counts as a near-duplicate")
    filt.add_argument("--workers", type=int, default=8, help="image-decoding threads")
    filt.set_defaults(func=_cmd_data_filter)

    convert = commands.add_parser("convert", help="official ALBEF / VLMo checkpoints → vlkit checkpoints (and back)")
    convert.add_argument("family", choices=("albef", "vlmo"), help="whose checkpoint")
    convert.add_argument("checkpoint", metavar="CKPT", help="the official file (with --to official: a vlkit "
                         "checkpoint or run folder)")
    convert.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the recipe (before "
                         "or after the options)")
    convert.add_argument("--out", required=True, help="output folder (checkpoints/, recipe.yaml, conversion.md)")
    convert.add_argument("--recipe", default=None, help="the recipe whose model the weights are for (default: "
                         "albef/base or vlmo/base; with --to official: the one stored in the checkpoint)")
    convert.add_argument("--layout", choices=("pretrain", "retrieval", "vqa", "nlvr2"), default=None,
                         help="ALBEF layout; retrieval also covers grounding and SNLI-VE (default: detected from the "
                         "keys; with --to official: the one converted from, else the model's)")
    convert.add_argument("--to", choices=("vlkit", "official"), default="vlkit", help="direction (default: vlkit)")
    convert.set_defaults(func=_cmd_convert)

    reg = commands.add_parser("registry", help="list registered encoders, objectives, heads, ... (and your plug-ins)")
    reg.add_argument("kind", nargs="?", help=f"one of {', '.join(registry.KINDS)}")
    reg.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                     help="import a plug-in module first (importable: installed or on PYTHONPATH); repeatable")
    reg.add_argument("--recipe", default=None, metavar="RECIPE",
                     help="import the plug-in modules a recipe lists under `imports:` first")
    reg.set_defaults(func=_cmd_registry)
    return parser


def _error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (a message's own line breaks become spaces). An error raised in a
    data-loader worker arrives wrapped in the worker's traceback (``Caught X in DataLoader worker process
    N. Original Traceback ...``): its own message is the traceback's last line."""
    lines = [part.strip() for part in str(err).splitlines() if part.strip()]
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in str(err):
        lines = [lines[-1].split(": ", 1)[-1]]
    return "error: " + " ".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, with ``KEY=VALUE`` overrides allowed anywhere after the command's arguments.

    argparse gives a positional list only the words right after the command's other positionals; the
    words after an option come back unparsed. For a command that takes overrides, those with ``=`` that
    are not options are overrides, in the order given (a malformed key is named by the recipe reader, as
    in the positional list); anything else left, an unknown option included, is argparse's error (exit 2).
    The namespace also carries ``command_line``: ``argv`` as given, for messages that repeat it.
    """
    argv = list(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    fields = vars(args)
    captured: list[str] = fields.pop(_CAPTURED, [])
    if "overrides" in fields:
        late = [word for word in extras if "=" in word and not word.startswith("-")]
        extras = [word for word in extras if word not in late]
        if captured:  # taken by a list option or --resume: put every override back in command-line order
            args.overrides = _in_order([*args.overrides, *captured, *late], argv)
        else:
            args.overrides = [*args.overrides, *late]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.command_line = argv
    return args


def _in_order(words: list[str], argv: list[str]) -> list[str]:
    """``words`` (each one of ``argv``'s) in the order ``argv`` holds them."""
    pending = collections.Counter(words)
    ordered = []
    for word in argv:
        if pending[word] > 0:
            pending[word] -= 1
            ordered.append(word)
    return ordered


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vlkit`` console script; returns the exit status.

    The one error boundary: a :class:`~vlkit.core.errors.UserError` anywhere ends in one line ``error: ...``
    (exit 2), non-finite numbers in one line (exit 3), Ctrl-C outside the trainer (which saves a checkpoint
    and returns 128 + the signal itself) in one line (exit 130), a full disk in one line naming the file
    (exit 2). Anything else is a bug and keeps its traceback.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, ranks other than 0 report warnings only
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(_error_line(err), file=sys.stderr)
        return EXIT_USER_ERROR
    except NonFiniteError as err:
        print(_error_line(err), file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C) during `vlkit {args.command}`; run it again to start over", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`vlkit recipes show R | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 128 + signal.SIGPIPE
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        out = vars(args).get("out")
        where = err.filename or (f"a file under {out}" if out else f"a file under {Path.cwd()}")
        print(f"error: no space left on the device while writing {where}; free space there or choose another --out",
              file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
