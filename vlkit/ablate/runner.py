"""``vlkit ablate GRID --out DIR``: every variant × seed trained in turn (finished runs skipped,
interrupted ones resumed), each followed by the grid's follow-up evaluations, then the report.

Layout: ``DIR/grid.json`` (what the report needs), ``DIR/grid.yaml`` (the grid file as given),
``DIR/runs/<variant>/seed<k>/`` (a normal run folder; follow-ups in ``…/<followup>/``), and the report
files of :mod:`vlkit.ablate.report`.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from vlkit.ablate.grid import Grid
from vlkit.ablate.report import write_report
from vlkit.recipe import Recipe, resolve
from vlkit.train.pretrain import run_pretraining
from vlkit.train.run_folder import run_contents
from vlkit.weights import checkpoints as ckpt

log = logging.getLogger("vlkit.ablate")


def run_folder(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}"


def _train(recipe: Recipe, folder: Path, progress: bool) -> None:
    """Train into ``folder`` unless it finished; continue it when it was interrupted."""
    if (folder / "metrics.json").is_file():
        log.info("%s: finished before, skipped", folder)
        return
    resume = bool(ckpt.list_checkpoints(folder / "checkpoints"))
    # the grid owns its run folders: a run that stopped before its first checkpoint starts again
    leftovers = not resume and bool(run_contents(folder)) if folder.is_dir() else False
    log.info("%s: %s", folder, "resuming" if resume else "training again (no checkpoint)" if leftovers else "training")
    run_pretraining(recipe, folder, resume=resume, progress=progress, overwrite=leftovers)


def run_grid(grid: Grid, out: Path, *, progress: bool = True) -> str:
    """Run every variant × seed of ``grid`` into ``out`` and write the report; returns its table."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = {variant: grid.seeds_of(variant) for variant in grid.variants}
    command = f"vlkit ablate {shlex.quote(str(grid.path))} --out {shlex.quote(str(out))}"
    (out / "grid.yaml").write_text(grid.path.read_text(encoding="utf-8"))
    followup_metrics = [f"{f.name}/{m}" for f in grid.followups for m in f.metrics or []]
    (out / "grid.json").write_text(json.dumps({
        "description": grid.description, "source": str(grid.path), "command": command, "runs": seeds,
        "metrics": grid.metrics and [*grid.metrics, *followup_metrics],
        "followups": [f.name for f in grid.followups]}, indent=2) + "\n")
    total = sum(len(s) for s in seeds.values())
    done = 0
    for variant, variant_seeds in seeds.items():
        for seed in variant_seeds:
            done += 1
            folder = run_folder(out, variant, seed)
            log.info("== run %d/%d: %s, seed %d", done, total, variant, seed)
            _train(grid.recipe(variant, seed), folder, progress)
            for followup in grid.followups:
                recipe = resolve(followup.recipe, [*followup.overrides, f"init_from={folder}", f"seed={seed}"]).recipe
                _train(recipe, folder / followup.name, progress)
            write_report(out)  # the table grows as runs finish
    return write_report(out)
