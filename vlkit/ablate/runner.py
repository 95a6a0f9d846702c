"""``vlkit ablate GRID --out DIR``: every variant × seed trained in turn (finished runs skipped,
interrupted ones resumed), each followed by the grid's follow-up evaluations, then the report.

Progress: a bar over the grid's runs (``run i/n: variant, seed k``), with each run's own training and
evaluation bars beneath it; ``progress=False`` turns them all off (log lines instead).

Interruption: SIGTERM or Ctrl-C while a run trains ends as in ``vlkit train``: the run writes a
checkpoint and :class:`~vlkit.train.trainer.Interrupted` (a ``KeyboardInterrupt``) propagates out of
:func:`run_grid` unchanged, for the command line to report (exit ``128 + signal``). Running the same
command again skips the finished runs and resumes the interrupted one from its checkpoint.

Layout: ``DIR/grid.json`` (what the report needs), ``DIR/grid.yaml`` (the grid file as given),
``DIR/runs/<variant>/seed<k>/`` (a normal run folder; follow-ups in ``…/<followup>/``), and the report
files of :mod:`vlkit.ablate.report`.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from vlkit import progress as progress_bars
from vlkit.ablate.grid import Grid
from vlkit.ablate.report import write_report
from vlkit.recipe import Recipe, resolve
from vlkit.train.pretrain import run_pretraining
from vlkit.train.run_folder import run_contents
from vlkit.weights import checkpoints as ckpt

log = logging.getLogger("vlkit.ablate")


def run_folder(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}"


def _train(recipe: Recipe, folder: Path, progress: bool, name: str) -> None:
    """Train into ``folder`` unless it finished; continue it when it was interrupted."""
    if (folder / "metrics.json").is_file():
        log.info("%s: finished before, skipped", folder)
        return
    resume = bool(ckpt.list_checkpoints(folder / "checkpoints"))
    # the grid owns its run folders: a run that stopped before its first checkpoint starts again
    leftovers = not resume and bool(run_contents(folder)) if folder.is_dir() else False
    log.info("%s: %s", folder, "resuming" if resume else "training again (no checkpoint)" if leftovers else "training")
    run_pretraining(recipe, folder, resume=resume, progress=progress, overwrite=leftovers, name=name)


def run_grid(grid: Grid, out: Path, *, progress: bool = True) -> str:
    """Run every variant × seed of ``grid`` into ``out`` and write the report; returns its table.

    Raises:
        Interrupted: SIGTERM / SIGINT while a run trained; that run wrote a checkpoint, and calling
            ``run_grid`` again resumes it (finished runs are skipped).
    """
    with progress_bars.switched(progress):
        return _run_grid(grid, out, progress)


def _run_grid(grid: Grid, out: Path, progress: bool) -> str:
    out.mkdir(parents=True, exist_ok=True)
    seeds = {variant: grid.seeds_of(variant) for variant in grid.variants}
    command = f"vlkit ablate {shlex.quote(str(grid.path))} --out {shlex.quote(str(out))}"
    (out / "grid.yaml").write_text(grid.path.read_text(encoding="utf-8"))
    followup_metrics = [f"{f.name}/{m}" for f in grid.followups for m in f.metrics or []]
    (out / "grid.json").write_text(json.dumps({
        "description": grid.description, "source": str(grid.path), "command": command, "runs": seeds,
        "metrics": grid.metrics and [*grid.metrics, *followup_metrics],
        "followups": [f.name for f in grid.followups]}, indent=2) + "\n")
    runs = [(variant, seed) for variant, variant_seeds in seeds.items() for seed in variant_seeds]
    with progress_bars.bar(len(runs), "ablation", unit="run", leave=True) as bar:
        for done, (variant, seed) in enumerate(runs, 1):
            folder = run_folder(out, variant, seed)
            bar.set_postfix_str(f"run {done}/{len(runs)}: {variant}, seed {seed}")
            log.log(logging.DEBUG if not bar.disable else logging.INFO, "== run %d/%d: %s, seed %d", done,
                    len(runs), variant, seed)
            base = grid.variant_bases.get(variant, grid.base)
            _train(grid.recipe(variant, seed), folder, progress, f"{base}, grid variant {variant}")
            for followup in grid.followups:
                recipe = resolve(followup.recipe, [*followup.overrides, f"init_from={folder}", f"seed={seed}"]).recipe
                _train(recipe, folder / followup.name, progress, f"{followup.recipe}, follow-up {followup.name}")
            write_report(out)  # the table grows as runs finish
            bar.update(1)
    return write_report(out)
