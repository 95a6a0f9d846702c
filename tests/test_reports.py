"""What a researcher reads: a run's ``report.md`` / ``curves.png``, an ablation's ``results.md`` /
``results.csv`` / plots, and ``bench.md`` / ``bench.json``. Fakes (metrics dicts, a TensorBoard log
written here, benchmark result dicts) stand in for trainings, but for one 3-step run."""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from vlkit.ablate.grid import GRID_FORMAT_HELP, load_grid
from vlkit.ablate.report import best_of, markdown, stats_of, write_report
from vlkit.bench import report as bench_report
from vlkit.bench.flops import image_stem
from vlkit.bench.throughput import BenchSettings, count_flops
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import run_pretraining
from vlkit.train.run_report import chance_level, number, write_run_report

torch.set_num_threads(1)

SCIENTIFIC = re.compile(r"\d[eE][+-]\d")
"""How Python writes 4.401e+05 or 1e-05 (a sha256 or a hex commit has no sign after its e)."""
RETRIEVAL = {"r_mean": 47.5, "txt_r1": 12.5, "img_r1": 25.0, "itc_r_mean": 50.0, "swap_acc": 0.5625, "txt_r5": 50.0,
             "chance_r1": 12.5, "n_images": 8.0, "n_texts": 40.0, "n_swaps": 16.0, "steps": 3, "samples": 24,
             "encoder_parameters": 439872, "images_skipped": 0, "annotations_skipped": 0, "bad_samples": 0}


def write_log(folder: Path, scalars: dict[str, list[tuple[int, float, float]]]) -> None:
    """A TensorBoard log in ``folder/tb``: tag → [(step, value, wall time)]."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tb"))
    for tag, points in scalars.items():
        for step, value, wall in points:
            writer.add_scalar(tag, value, step, walltime=wall)
    writer.close()


def trainer_log(losses: dict[str, list[float]], *, start: float = 1000.0, window_s: float = 2.0, rate: float = 8.0,
                evals: dict[str, list[tuple[int, float]]] | None = None,
                first_step: int = 1) -> dict[str, list[tuple[int, float, float]]]:
    """What the trainer logs every step (log_every 1) from ``first_step``: losses, lr, samples/s and the
    window's time split (data 0.5 s of ``window_s``), written at the end of each window; evaluations 1 s
    after their step."""
    steps = len(next(iter(losses.values())))
    out: dict[str, list[tuple[int, float, float]]] = {}
    for i in range(steps):
        wall, step = start + window_s * (i + 1), first_step + i
        for name, values in losses.items():
            out.setdefault(f"loss/{name}", []).append((step, values[i], wall))
        out.setdefault("lr", []).append((step, 1e-3, wall))
        out.setdefault("samples_per_s", []).append((step, rate, wall))
        out.setdefault("time/data_s", []).append((step, 0.5, wall))
        out.setdefault("time/compute_s", []).append((step, window_s - 0.5, wall))
    for tag, points in (evals or {}).items():
        out[f"eval/{tag}"] = [(step, value, start + window_s * step + 1.0) for step, value in points]
    return out


def fake_run(folder: Path, recipe: str = "albef/tiny", overrides: tuple[str, ...] = ("train.steps=3",),
             **log: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(load_recipe(recipe, list(overrides)).to_yaml())
    losses = log.pop("losses", {"total": [9.1, 8.9, 8.7], "itc": [2.1, 2.09, 2.088], "itm": [0.7, 0.66, 0.641],
                                 "mlm": [6.3, 6.1, 5.9999]})
    write_log(folder, trainer_log(losses, **log))
    return folder


# --------------------------------------------------------------------------- numbers for people
def test_numbers_are_written_for_people():
    assert number(440100.0) == "440,100" and number(439872) == "439,872" and number(12345.6) == "12,346"
    assert number(12.5) == "12.5" and number(41.666666) == "41.67" and number(0.5625) == "0.5625"
    assert number(5.99996) == "6.000"  # rounded: the zeros say how precise it is
    assert number(1e-5) == "0.00001" and number(0.001) == "0.001" and number(0) == "0"
    assert number(float("nan")) == "nan"
    assert chance_level("acc", {"acc": 60.0, "majority_acc": 55.0}) == (55.0, "majority class")
    assert chance_level("acc", {"acc": 60.0, "chance_acc": 100 / 3})[1] == "1/C classes"
    assert chance_level("vqa/vqa_acc", {"vqa/most_frequent_acc": 10.7})[0] == 10.7
    assert chance_level("swap_acc_itc", {}) == (0.5, "true or swapped caption")
    assert chance_level("r_mean", RETRIEVAL) is None and chance_level("txt_r1", {}) is None


# --------------------------------------------------------------------------- report.md of a run
def test_run_report_holds_recipe_settings_timing_losses_and_metrics_with_chance(tmp_path):
    own = fake_run(tmp_path / "own", overrides=("train.steps=3", "description=my variant"))
    assert "| recipe | name not recorded" in write_run_report(own, dict(RETRIEVAL), "my variant").read_text()
    run = fake_run(tmp_path / "run")
    text = write_run_report(run, dict(RETRIEVAL), "tiny", name="albef/tiny").read_text()
    assert "| recipe | `albef/tiny` |" in text
    assert "| encoder | albef, size tiny (439,872 parameters) |" in text
    assert "| objectives (weight) | itc × 1, itm × 1, mlm × 1 |" in text
    assert "| steps | 3 |" in text and "| batch (global) | 64 |" in text and "| seed | 42 |" in text
    assert "| lr | 0.001 (cosine, warm-up 50 steps, min 0.00001) |" in text
    # three windows of 2 s (0.5 s waiting for data) at 8 samples/s; first step starts at 1000, eval at 1007
    assert "| training time | 6 s (of which waiting for data 1.5 s) |" in text
    assert "| throughput | 8 samples/s |" in text
    assert "| wall time | 6 s (first step to the end of the final evaluation) |" in text
    assert "| total | 8.7 |" in text and "| itm | 0.641 |" in text and "| mlm | 6.000 |" in text
    assert "| **txt_r1** | 12.5 | 12.5 (100/N, N = 8 images) |" in text
    assert "| **img_r1** | 25 | 12.5 (100/N, N = 8 images) |" in text
    assert "| **swap_acc** | 0.5625 | 0.5 (true or swapped caption) |" in text
    assert "| **r_mean** | 47.5 | — |" in text and "At or below chance: `txt_r1`." in text
    assert "Evaluated on: images 8, texts 40, swaps 16." in text
    assert "| chance_r1 |" not in text and "| n_images |" not in text  # beside the metrics, not as scores
    assert not SCIENTIFIC.search(text), SCIENTIFIC.search(text)
    assert "No evaluation was logged" in text and (run / "curves.png").stat().st_size > 0


def test_run_report_matches_a_shipped_recipe_by_its_description_and_says_so(tmp_path):
    run = fake_run(tmp_path / "run")
    description = load_recipe("albef/tiny").description
    text = write_run_report(run, dict(RETRIEVAL), description).read_text()
    assert "| recipe | `albef/tiny` (the shipped recipe with this description; the values below are the run's own) |" \
        in text


def test_eval_curves_or_a_note_saying_why_not(tmp_path):
    once = fake_run(tmp_path / "once", evals={"r_mean": [(3, 47.5)]})
    text = write_run_report(once, dict(RETRIEVAL), name="albef/tiny").read_text()
    assert "Evaluation ran once, at the end (step 3): set train.eval_every to draw evaluation curves." in text
    often = fake_run(tmp_path / "often", overrides=("train.steps=3", "train.eval_every=1"),
                     evals={"r_mean": [(1, 20.0), (2, 30.0), (3, 47.5)], "txt_r1": [(1, 12.5), (2, 12.5), (3, 12.5)]})
    text = write_run_report(often, dict(RETRIEVAL), name="albef/tiny").read_text()
    assert "`eval/r_mean`, `eval/txt_r1`" in text and "Evaluation ran once" not in text


def test_a_resumed_run_reports_its_training_time_but_no_wall_time(tmp_path):
    run = fake_run(tmp_path / "run")
    # resumed from a checkpoint at step 3 the next day: a second session, a second event file
    write_log(run, trainer_log({"total": [8.0, 7.0], "itc": [2.0, 1.9], "itm": [0.6, 0.5], "mlm": [5.4, 4.6]},
                               start=90000.0, first_step=4))
    text = write_run_report(run, dict(RETRIEVAL), name="albef/tiny").read_text()
    assert "| training time | 10 s (of which waiting for data 2.5 s) |" in text
    assert "not shown: the run was resumed (2 sessions in tb/)" in text
    recorded = write_run_report(run, {**RETRIEVAL, "wall_s": 4000.0}, name="albef/tiny").read_text()
    assert "| wall time | 1 h 06 min (the last session only: the run was resumed" in recorded
    assert "| wall_s |" not in recorded
    assert "| throughput | 8 samples/s |" in text and "## Final losses (step 5)" in text and "| total | 7 |" in text


def test_a_three_step_run_writes_its_report_and_curves(tmp_path, small_recipe):
    out = tmp_path / "run"
    run_pretraining(small_recipe(tmp_path, "albef/tiny", "train.steps=3", "train.cpu_threads=1"), out, progress=False)
    text = (out / "report.md").read_text()
    assert (out / "curves.png").stat().st_size > 0 and "![training curves](curves.png)" in text
    assert "| recipe | `albef/tiny` (the shipped recipe with this description" in text
    assert "| steps | 3 |" in text and "| samples | 24 |" in text and "samples/s |" in text
    assert re.search(r"\| training time \| [\d.]+ s \(of which waiting for data [\d.]+ s\) \|", text)
    wall_s = json.loads((out / "metrics.json").read_text())["wall_s"]
    assert wall_s > 0 and re.search(r"\| wall time \| [\d.]+ s \(the whole run: data preparation", text)
    assert "## Final losses (step 3)" in text and "| itc |" in text
    assert "(100/N, N = 8 images)" in text and "## Produced by" in text
    assert "Evaluation ran once, at the end (step 3)" in text
    assert not SCIENTIFIC.search(text.split("## Produced by")[0])


# --------------------------------------------------------------------------- ablation results
def grid_of(runs: dict[str, list[int]], metrics: list[str] | None = None) -> dict[str, Any]:
    return {"description": "d", "command": "vlkit ablate g.yaml", "runs": runs, "metrics": metrics, "followups": []}


def test_one_seed_is_never_bold_and_the_footnote_says_why():
    results = {"a": {0: {"r_mean": 40.0, "swap_acc": 0.52}}, "b": {0: {"r_mean": 20.0, "swap_acc": 0.48}}}
    table = markdown(grid_of({"a": [0], "b": [0]}), results, ["r_mean", "swap_acc"])
    assert "**" not in table.split("\n\n")[2]  # the table itself
    assert "| a | 1 | 40.00 | 0.520 |" in table
    assert "No bold in every column: one seed per variant: no seed spread to tell a difference from noise." in table


def test_two_seeds_within_their_spread_are_not_bold_and_apart_they_are():
    close = {"a": {0: {"r_mean": 40.0}, 1: {"r_mean": 44.0}}, "b": {0: {"r_mean": 39.0}, 1: {"r_mean": 42.0}}}
    table = markdown(grid_of({"a": [0, 1], "b": [0, 1]}), close, ["r_mean"])
    assert "**" not in table.split("\n\n")[2]
    assert "a (42.00 ± 2.83) and b (40.50 ± 2.12) are within the seeds' spread" in table
    apart = {"a": {0: {"r_mean": 40.0}, 1: {"r_mean": 41.0}}, "b": {0: {"r_mean": 30.0}, 1: {"r_mean": 31.0}}}
    assert best_of(stats_of(apart, ["r_mean"]), "r_mean") == ("a", "")
    assert "| a | 2 | **40.50 ± 0.71** |" in markdown(grid_of({"a": [0, 1], "b": [0, 1]}), apart, ["r_mean"])
    mixed = {"a": {0: {"r_mean": 40.0}, 1: {"r_mean": 41.0}}, "b": {0: {"r_mean": 30.0}}}
    assert best_of(stats_of(mixed, ["r_mean"]), "r_mean") == (None, "b ran one seed: no spread to compare with")


def ablation(tmp_path: Path, variants: dict[str, tuple[tuple[str, ...], dict[str, list[float]]]],
             metrics: dict[str, dict[str, float]], seeds: tuple[int, ...] = (0,)) -> Path:
    """An ablation folder of fake finished runs: variant → (recipe overrides, losses), its metrics."""
    out = tmp_path / "ablation"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps(grid_of({v: list(seeds) for v in variants}, ["txt_r1", "swap_acc"])))
    prov = {"code": {"vlkit": "0.1.0", "git_commit": "abc", "dirty": False}, "recipe_sha256": "r" * 64,
            "libraries": {"torch": "2.6"}, "device": "cpu", "world_size": 1, "seed": 0, "step": 3,
            "eval_data": {"split": "test", "files": [{"path": "test.json", "bytes": 10, "sha256": "1" * 64}],
                          "counts": {"n_images": 8}}}
    for i, (variant, (overrides, losses)) in enumerate(variants.items()):
        for seed in seeds:
            folder = fake_run(out / "runs" / variant / f"seed{seed}", overrides=("train.steps=3", *overrides),
                              losses=losses, rate=8.0 * (i + 1))
            (folder / "metrics.json").write_text(json.dumps({**metrics[variant], "provenance": prov}))
    return out


def test_ablation_draws_shared_objective_curves_chance_lines_and_times_each_variant(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn: dict[str, list[Any]] = {"axhline": [], "annotate": []}
    for name in drawn:
        original = getattr(Axes, name)

        def spy(self: Axes, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            drawn[_name].append(args)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, spy)
    full = {"total": [9.0, 8.8, 8.7], "itc": [2.1, 2.0, 1.9], "itm": [0.7, 0.69, 0.68], "mlm": [6.2, 6.1, 6.0]}
    no_mlm = {"total": [2.8, 2.7, 2.6], "itc": [2.1, 2.0, 1.95], "itm": [0.7, 0.68, 0.66]}
    scores = {"full": {"txt_r1": 25.0, "swap_acc": 0.55, "chance_r1": 12.5},
              "no_mlm": {"txt_r1": 12.5, "swap_acc": 0.5, "chance_r1": 12.5}}
    out = ablation(tmp_path, {"full": ((), full), "no_mlm": (("objectives.mlm=null",), no_mlm)}, scores)
    table = write_report(out)
    assert (out / "curves_loss_itc.png").is_file() and (out / "curves_loss_itm.png").is_file()
    assert not (out / "curves_loss.png").exists() and not (out / "curves_loss_mlm.png").exists()
    assert "No `curves_loss.png`: the variants' total losses sum different objectives (full: itc × 1, itm × 1, " \
           "mlm × 1; no_mlm: itc × 1, itm × 1)" in table
    for name in ("bars_txt_r1.png", "bars_swap_acc.png", "curves_loss_itc.png", "curves_loss_itm.png"):
        assert f"`{name}`" in table and (out / name).stat().st_size > 0  # every plot listed is written
    assert "No evaluation curves for `txt_r1`, `swap_acc`" in table and "set `train.eval_every`" in table
    assert [a[0] for a in drawn["axhline"]] == [12.5, 0.5]  # chance on the txt_r1 and swap_acc bars
    assert [a[0] for a in drawn["annotate"]] == ["25.00", "12.50", "0.550", "0.500"]  # value labels
    assert "| *chance* | | 12.5 | 0.5 |" in table
    assert "| full | 1 | 25.00 | 0.550 | 6 | 8 |" in table and "| no_mlm | 1 | 12.50 | 0.500 | 6 | 16 |" in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], float(r["train_s"]), float(r["wall_s"]), float(r["samples_per_s"])) for r in rows] == [
        ("full", 6.0, 6.0, 8.0), ("no_mlm", 6.0, 6.0, 16.0)]


def test_ablation_with_the_same_objectives_draws_the_total_loss(tmp_path):
    losses = {"total": [2.8, 2.7, 2.6], "itc": [2.1, 2.0, 1.95], "itm": [0.7, 0.68, 0.66]}
    scores = {v: {"txt_r1": 12.5, "swap_acc": 0.5, "chance_r1": 12.5} for v in ("a", "b")}
    out = ablation(tmp_path, {"a": (("objectives.mlm=null",), losses), "b": (("objectives.mlm=null",), losses)},
                   scores)
    table = write_report(out)
    assert (out / "curves_loss.png").is_file() and "`curves_loss.png`" in table and "No `curves_loss.png`" not in table


def test_grid_help_documents_a_grid_that_loads(tmp_path):
    example = textwrap.dedent("\n".join(GRID_FORMAT_HELP.split("\n\n")[0].splitlines()[1:]))
    path = tmp_path / "grid.yaml"
    path.write_text(example)
    grid = load_grid(path)
    assert list(grid.variants) == ["mlm_itm", "full", "mome"] and grid.seeds == [0, 1]
    assert [f.name for f in grid.followups] == ["vqa"]
    for key in ("description", "base", "overrides", "seeds", "metrics", "variants", "followups", "results.csv",
                "curves_loss_<objective>.png"):
        assert key in GRID_FORMAT_HELP


# --------------------------------------------------------------------------- vlkit bench
def bench_result(**changes: Any) -> dict[str, Any]:
    """A benchmark's figures as run_benchmark returns them (a quiet CPU run of albef/tiny)."""
    result: dict[str, Any] = {
        "recipe": "albef/tiny", "samples_per_s": 336.0, "step_ms_median": 190.0, "step_ms_p10": 188.0,
        "step_ms_p90": 193.0, "step_ms_all": [190.0, 188.0, 193.0, 191.0, 189.0],
        "executed_flops_per_sample": 0.2209e9, "reference_flops_per_sample": 0.1924e9,
        "executed_over_reference": 0.2209 / 0.1924, "mfu": 0.39, "effective_mfu": 0.33, "peak_flops": 1.94e11,
        "peak_flops_source": "measured (matmul probe)", "peak_mem_bytes": 827 * 2**20,
        "peak_mem_kind": "process peak RSS", "backend": "sdpa", "precision": "fp32", "batch_size": 64,
        "text_len_mean": 23.0, "breakdown_ms": {}, "stand_ins": {}, "omitted_work": [],
        "environment": {"cpu": "AMD EPYC", "threads": 2, "torch": "2.6"},
        "image_stem": {"stem": "conv", "key": "encoder.image.stem", "stem_gflops_forward": 0.016449536,
                       "patch_gflops_forward": 0.001572864, "teacher": True, "extra_gflops_per_sample": 0.05931008}}
    result.update(changes)
    return result


def test_a_quiet_benchmark_is_reliable_and_shows_its_peak_in_flops():
    checks = bench_report.reliability(bench_result())
    assert checks["mfu_reliable"] and checks["warnings"] == [] and checks["step_ms_max_over_min"] < 1.1
    text = bench_report.markdown(bench_result(), "vlkit bench albef/tiny")
    assert "Peak 194 GFLOP/s, measured (matmul probe)." in text and "(unreliable)" not in text
    assert "| 336.0 | 190.0 (188.0–193.0) | 0.2209 | 0.1924 | 1.148 | 39.0% | 33.0% |" in text
    assert bench_report.rate(7.12e14) == "712 TFLOP/s" and bench_report.rate(1.25e12) == "1.25 TFLOP/s"


@pytest.mark.parametrize("times", [[100.0] * 9 + [160.0],  # slowest/fastest 1.6 > 1.5
                                   [100.0, 115.0, 85.0, 112.0, 88.0, 110.0, 90.0]])  # CV 12% > 10%, max/min 1.35
def test_widely_spread_step_times_mark_mfu_unreliable(tmp_path, times):
    result = bench_result(step_ms_all=times)
    checks = bench_report.reliability(result)
    assert not checks["mfu_reliable"] and "step times spread widely" in checks["warnings"][0]
    text = bench_report.markdown(result, "x")
    assert "39.0% (unreliable)" in text and "**Warning: MFU unreliable.** Step times spread widely" in text
    bench_report.write(tmp_path, result, "x")
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["mfu_reliable"] is False and written["reliability"]["warnings"] == checks["warnings"]


def test_a_few_steps_get_a_note_not_a_verdict():
    checks = bench_report.reliability(bench_result(step_ms_all=[190.0, 400.0]))
    assert checks["mfu_reliable"] and "only 2 timed step(s)" in checks["notes"][0]


@pytest.mark.parametrize(("changes", "words"), [
    ({"peak_flops": 1.0e9}, "below 2 GFLOP/s per thread (2 threads): implausibly low for a CPU"),
    ({"peak_flops": 5.0e10, "mfu": 1.48}, "above the measured peak of 50 GFLOP/s (MFU over 100%)"),
    ({"peak_flops": 1.5e14, "environment": {"gpu": "NVIDIA H100 80GB HBM3", "threads": 16}},
     "the measured peak of 150 TFLOP/s is below 25% of the H100 SXM's datasheet 989 TFLOP/s (dense BF16)"),
])
def test_an_implausible_peak_marks_mfu_unreliable(changes, words):
    result = bench_result(**changes)
    checks = bench_report.reliability(result)
    assert not checks["mfu_reliable"] and any(words in w for w in checks["warnings"]), checks["warnings"]
    assert "(unreliable)" in bench_report.markdown(result, "x")
    h100 = bench_result(peak_flops=7.0e14, environment={"gpu": "NVIDIA H100 80GB HBM3", "threads": 16})
    assert bench_report.reliability(h100)["mfu_reliable"]
    assert "the H100 SXM's datasheet: 989 TFLOP/s dense BF16, 71% of it" in bench_report.markdown(h100, "x")


def test_the_conv_stem_explains_an_executed_over_reference_ratio_above_one():
    recipe = load_recipe("albef/tiny")
    conv = count_flops(recipe, BenchSettings(batch_size=2, text_len=20))
    patch = count_flops(load_recipe("albef/tiny", ["encoder.image.stem=patch"]), BenchSettings(batch_size=2,
                                                                                                text_len=20))
    stem = conv["image_stem"]
    assert stem == image_stem(recipe.encoder, recipe.objectives) and patch["image_stem"] is None
    extra = conv["executed_flops_per_sample"] - patch["executed_flops_per_sample"]
    assert stem["extra_gflops_per_sample"] * 1e9 == pytest.approx(extra, rel=1e-6)  # all of the difference
    assert conv["executed_over_reference"] > 1 > patch["executed_over_reference"]
    text = bench_report.markdown(bench_result(), "x")
    assert "**Executed/reference 1.148 > 1**" in text and "`encoder.image.stem: conv`" in text
    assert "adds 59.31 MFLOP per sample (online forward and backward, teacher forward" in text
    assert "executed/reference would be 0.840" in text
    assert bench_report.ratio_note(bench_result(executed_over_reference=0.86)) is None
