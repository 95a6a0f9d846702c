"""Never a silent wrong number: non-finite weights and scores are errors, never hits; training that
diverges stops without writing what diverged; an objective without data to act on is refused; the
benchmark says what it left out; every result file records what produced it; conversion refuses what
the official layout cannot hold."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from vlkit.core.errors import NonFiniteError, UserError
from vlkit.eval.composed import rank
from vlkit.eval.retrieval import UNRANKED, ground_truth_ranks, recalls_from_ranks
from vlkit.eval.zeroshot import topk_accuracy
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.train.trainer import NonFiniteLoss
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release

torch.set_num_threads(1)
NAN = float("nan")
GROUNDED = ["objectives.grounding={type: grounding}", "objectives.phrase_patch={type: phrase_patch}",
            "objectives.itm.hard_negatives=3"]
"""The objectives that read annotations (phrase boxes, hard-negative captions), whatever albef/tiny ships."""


def small(root: Path, *extra: str, name: str = "albef/tiny"):
    return load_recipe(name, ["data.source.train_images=48", "data.source.val_images=6",
                              "data.source.test_images=8", f"data.source.root={root}", "train.batch_size=8",
                              "train.warmup_steps=1", "train.cpu_threads=1", "eval.batch_size=8", "eval.k_test=4",
                              *extra])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trust-data")


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust-run") / "run"
    run_pretraining(small(data_root, "train.steps=2"), out, progress=False)
    return out


# --------------------------------------------------------------------------- 1. NaN is never a hit
def test_a_nan_positive_ranks_last_and_is_never_a_hit() -> None:
    scores = torch.full((3, 5), NAN)  # what a NaN model scores: NaN everywhere
    ranks = ground_truth_ranks(scores, [[0], [1], [2]])
    assert ranks.tolist() == [UNRANKED] * 3
    assert recalls_from_ranks(ranks, ranks)["r_mean"] == 0.0  # was 100: nothing compared greater than NaN
    mixed = torch.tensor([[NAN, 0.5, 0.1], [0.3, 0.9, 0.1]])
    assert ground_truth_ranks(mixed, [[0], [0]]).tolist() == [UNRANKED, 1]


def test_every_ranking_metric_refuses_non_finite_scores() -> None:
    with pytest.raises(NonFiniteError, match="zero-shot classification scores: 2 of 6"):
        topk_accuracy(torch.tensor([[NAN, 0.1, 0.2], [0.3, math.inf, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(NonFiniteError, match="composed retrieval"):
        rank(torch.tensor([[NAN, 1.0], [1.0, 0.0]]), torch.tensor([1.0, 0.0]), k=1)


def _nan_weights(run: Path, path: Path) -> None:
    """A copy of the run's weights file with every floating tensor NaN (written as a foreign tool would:
    vlkit itself refuses to write it)."""
    loaded = release.load_weights(run / "model.safetensors")
    state = {k: torch.full_like(v, NAN) if v.is_floating_point() else v.clone() for k, v in loaded["model"].items()}
    with pytest.raises(NonFiniteError, match="weights file"):
        release.save_weights(path, state, recipe_yaml=loaded["recipe"], step=2, samples=16)
    tensors, aliases = release.deduplicate(state)
    save_file(tensors, str(path), metadata={"format": release.FORMAT, "version": str(release.VERSION),
                                            "recipe": loaded["recipe"], "step": "2", "samples": "16",
                                            "aliases": json.dumps(aliases)})


def test_evaluating_nan_weights_is_an_error_not_a_perfect_recall(trained: Path, data_root: Path,
                                                                 tmp_path: Path) -> None:
    """Observation 1: `vlkit eval ... eval.k_test=0 --checkpoint NAN.safetensors` reported r_mean 100."""
    from vlkit.eval.checkpoint_eval import run_evaluation

    nan = tmp_path / "NAN.safetensors"
    _nan_weights(trained, nan)
    with pytest.raises(NonFiniteError, match=r"NAN.safetensors holds NaN or infinite values in \d+ of the \d+ "
                                             r"weights the evaluation would load"):
        run_evaluation(small(data_root, "eval.k_test=0"), nan, tmp_path / "ev")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_finite_weights_that_overflow_are_refused_at_the_scores(trained: Path, data_root: Path,
                                                                tmp_path: Path) -> None:
    """Finite is not good: a huge projection makes every contrastive feature NaN after normalization."""
    from vlkit.eval.checkpoint_eval import run_evaluation

    loaded = release.load_weights(trained / "model.safetensors")
    state = dict(loaded["model"])
    key = next(k for k in state if k.startswith("encoder.") and k.endswith("vision_proj.weight"))
    state[key] = torch.full_like(state[key], 3e38)
    huge = tmp_path / "huge" / "model.safetensors"
    release.save_weights(huge, state, recipe_yaml=loaded["recipe"], step=2, samples=16)
    with pytest.raises(NonFiniteError, match="retrieval: the gallery's contrastive image features"):
        run_evaluation(small(data_root, "eval.k_test=0"), huge, tmp_path / "ev")


# --------------------------------------------------------------------------- 2. divergence stops the run
def test_diverging_weights_stop_the_run_and_no_non_finite_file_is_written(data_root: Path, tmp_path: Path) -> None:
    """Observation 2: the guard read the loss only; a huge learning rate made the weights NaN while the loss
    of the step before was finite, and that state was saved as checkpoint and model.safetensors."""
    out = tmp_path / "run"
    recipe = small(data_root, "train.lr=1e6", "train.steps=6", "train.ckpt_every=1", "train.log_every=100")
    with pytest.raises(NonFiniteLoss) as caught:
        run_pretraining(recipe, out, progress=False)
    message = str(caught.value)
    assert "the weights in optimizer step" in message and "No checkpoint or weights file of that state" in message
    assert "Last finite checkpoint: " in message and "largest |weight|" in message
    assert "Finite is not the same as good" in message
    saved = ckpt.list_checkpoints(out / "checkpoints")
    assert saved and caught.value.last_finite == saved[-1][1]
    for _, path in saved:
        assert ckpt.nonfinite_keys(ckpt.load(path)) == []
    if (out / "model.safetensors").exists():
        assert ckpt.nonfinite_keys(release.load_weights(out / "model.safetensors")["model"]) == []
    assert not (out / "metrics.json").exists()


def test_non_finite_gradients_are_caught_even_when_the_loss_is_finite(data_root: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = Pretraining(small(data_root, "train.steps=6", "train.ckpt_every=2", "train.log_every=100"),
                      tmp_path / "run")
    weight = run.model.encoder.word_embeddings().weight
    calls = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * NAN if calls["n"] == 3 else grad  # the third step's gradient

    weight.register_hook(poison)
    with pytest.raises(NonFiniteLoss, match=r"the gradient norm in optimizer step 3; the weights in optimizer step 3.*"
                                            r"Last finite checkpoint: .*step_00000002.pt \(step 2\)") as caught:
        run.trainer(progress=False).fit()
    assert "the loss in optimizer step 3" not in str(caught.value)  # its loss was finite (the next one is not)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [2]


def test_checkpoint_and_weights_writers_refuse_non_finite_tensors(tmp_path: Path) -> None:
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, math.inf])}
    with pytest.raises(NonFiniteError, match=r"checkpoint .*1 tensor\(s\) hold NaN or infinite values \(model.b\)"):
        ckpt.save_atomic({"model": state, "step": 1}, tmp_path / "step_00000001.pt")
    with pytest.raises(NonFiniteError, match=r"optimizer.state.0.exp_avg"):
        ckpt.save_atomic({"model": {"a": torch.ones(2)}, "optimizer": {"state": {0: {"exp_avg": torch.tensor([NAN])}}}},
                         tmp_path / "step_00000002.pt")
    with pytest.raises(NonFiniteError, match="weights file"):
        release.save_weights(tmp_path / "model.safetensors", state, recipe_yaml="", step=1, samples=1)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


# --------------------------------------------------------------------------- 4. objectives with nothing to act on
def test_objectives_reading_annotations_the_data_lacks_are_refused(trained: Path, data_root: Path,
                                                                   tmp_path: Path) -> None:
    """Observation 4: grounding / phrase_patch on data without phrase boxes logged loss 0.0 for a whole run."""
    from vlkit.train.run_checks import MissingAnnotations, require_annotations

    folder = next(p.parent for p in data_root.rglob("train.json"))
    records = json.loads((folder / "train.json").read_text())
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{k: v for k, v in r.items() if k != "phrases"} for r in records]))
    source = (f"data.source={{type: json_pairs, splits: {{train: [{plain}], test: [{folder / 'test.json'}]}}, "
              f"image_root: {folder}}}")
    recipe = load_recipe("albef/tiny", [source, f"data.tokenizer={folder / 'tokenizer'}", "train.batch_size=8",
                                        "data.group_batches=false", *GROUNDED])
    with pytest.raises(MissingAnnotations, match=r"objectives.grounding \(grounding\) reads the `phrases` annotations, "
                                                 rf"but none of the {len(records)} `train` entries has any.*"
                                                 r"objectives.grounding=null"):
        Pretraining(recipe, tmp_path / "run")
    # a shard stream carries no annotations at all
    objectives = {name: cfg for name, cfg in recipe.objectives.items() if cfg.annotations}
    assert set(objectives) == {"itm", "grounding", "phrase_patch"}
    with pytest.raises(MissingAnnotations, match=r"objectives.itm \(itm\) reads the `hard_negatives` annotations, but "
                                                 "this run trains on a shard stream"):
        require_annotations(objectives, None, "train")
    assert issubclass(MissingAnnotations, UserError)


# --------------------------------------------------------------------------- 5. the benchmark's omitted work
def test_bench_batches_carry_phrase_stand_ins_and_name_what_they_cannot(tmp_path: Path) -> None:
    """Observation 5: grounding / phrase_patch got empty phrase regions in `vlkit bench` and did nothing."""
    from vlkit.bench import report
    from vlkit.bench.batches import omitted_work, stand_ins
    from vlkit.bench.throughput import BenchRun, BenchSettings, run_benchmark

    recipe = load_recipe("albef/tiny", ["train.device=cpu", *GROUNDED])
    run = BenchRun(recipe, torch.device("cpu"), BenchSettings(batch_size=4, pool=1))
    regions = run.pool[0].extras["phrase_regions"]
    assert len(regions.rows) == 8 and bool(regions.tokens.any(1).all()) and bool((regions.boxes > 0).all())
    result = run.model(run.pool[0], 10**6)
    assert float(result.metrics["metric/grounding/phrases"]) == 8.0  # the objective acted on them
    losses = {k: float(v.detach()) for k, v in result.losses.items()}
    assert losses["loss/grounding"] > 0 and losses["loss/phrase_patch"] > 0
    assert set(stand_ins(dict(recipe.objectives))) == {"hard_negatives", "phrases"}
    assert omitted_work(dict(recipe.objectives)) == []
    plugin = {"depth": SimpleNamespace(type="depth_order", annotations=frozenset({"depth_maps"}))}
    assert omitted_work(plugin) == ["objectives.depth (depth_order) reads `depth_maps` annotations, which the "
                                    "synthetic batches do not carry: the timed step does none of its work on them"]

    figures = run_benchmark(recipe, torch.device("cpu"), BenchSettings(steps=1, warmup=0, batch_size=4,
                                                                       profile_steps=0, peak_tflops=1.0))
    figures.update(recipe="albef/tiny", overrides=[])
    report.write(tmp_path, figures, "vlkit bench albef/tiny")
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["omitted_work"] == [] and set(written["stand_ins"]) == {"hard_negatives", "phrases"}
    assert written["provenance"]["recipe_sha256"] and written["provenance"]["libraries"]["torch"]
    text = (tmp_path / "bench.md").read_text()
    assert "Omitted work: none" in text and "Annotation stand-ins" in text and "Produced by: vlkit" in text
    figures["omitted_work"] = omitted_work(plugin)
    assert "**Omitted work**" in report.markdown(figures, "x")


# --------------------------------------------------------------------------- 6. provenance
def test_metrics_and_report_record_what_produced_them(trained: Path) -> None:
    written = json.loads((trained / "metrics.json").read_text())
    prov = written["provenance"]
    assert prov["code"]["vlkit"] and len(prov["recipe_sha256"]) == 64 and prov["world_size"] == 1
    assert prov["seed"] == load_recipe(trained / "recipe.yaml").seed and prov["step"] == 2
    assert set(prov["libraries"]) >= {"torch", "timm", "transformers"} and prov["device"].startswith("cpu")
    data = prov["eval_data"]
    assert data["split"] == "test" and [Path(f["path"]).name for f in data["files"]] == ["test.json",
                                                                                       "test_swaps.json"]
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in data["files"])
    assert data["counts"]["n_images"] == 8 and data["counts"]["n_skipped_annotations"] == 0
    report = (trained / "report.md").read_text()
    assert "## Produced by" in report and prov["recipe_sha256"][:12] in report and "test.json" in report


def _fake_run(folder: Path, r_mean: float, test_sha: str, n_images: int) -> None:
    folder.mkdir(parents=True)
    prov = {"code": {"vlkit": "0.1.0", "git_commit": "abc", "dirty": False}, "recipe_sha256": "r" * 64,
            "libraries": {"torch": "2.6"}, "device": "cpu", "world_size": 1, "seed": 0, "step": 2,
            "eval_data": {"split": "test", "files": [{"path": str(folder / "test.json"), "bytes": 10,
                                                     "sha256": test_sha}],
                          "counts": {"n_images": n_images}}}
    (folder / "metrics.json").write_text(json.dumps({"r_mean": r_mean, "provenance": prov}))


def test_ablation_table_records_provenance_and_refuses_runs_on_different_data(tmp_path: Path) -> None:
    from vlkit.ablate.report import IncomparableRuns, write_report

    out = tmp_path / "ablation"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"description": "t", "command": "vlkit ablate g", "metrics": ["r_mean"],
                                               "runs": {"a": [0], "b": [0]}, "followups": []}))
    _fake_run(out / "runs" / "a" / "seed0", 10.0, "1" * 64, 8)
    _fake_run(out / "runs" / "b" / "seed0", 20.0, "1" * 64, 8)  # same content at another path
    write_report(out)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["git_commit"] for r in rows] == ["abc", "abc"]
    assert rows[0]["eval_data_sha256"] == rows[1]["eval_data_sha256"]
    assert {"vlkit", "recipe_sha256", "torch", "device", "world_size", "seed", "step"} <= set(rows[0])
    assert "evaluation data sha256" in (out / "results.md").read_text()

    (out / "runs" / "b" / "seed0" / "metrics.json").unlink()
    (out / "runs" / "b" / "seed0").rmdir()
    _fake_run(out / "runs" / "b" / "seed0", 20.0, "2" * 64, 16)
    with pytest.raises(IncomparableRuns, match=r"runs/a/seed0 and runs/b/seed0 ran their evaluation on different data "
                                               r"\(file 1 sha256 1111111111111111 vs 2222222222222222; "
                                               r"n_images 8 vs 16\)"):
        write_report(out)


# --------------------------------------------------------------------------- 7. conversion refuses what it cannot hold
def test_export_to_official_albef_refuses_the_conv_stem(tmp_path: Path) -> None:
    """Observation 7: `vlkit convert albef RUN --to official` wrote visual_encoder.patch_embed.stem.* keys."""
    from vlkit.convert import ConversionError, vlkit_to_official
    from vlkit.convert.io import save_vlkit
    from vlkit.convert.target import build_model

    recipe = load_recipe("albef/tiny", ["encoder.image.stem=conv"])
    state = build_model(recipe, "cpu").state_dict()
    save_vlkit(tmp_path / "run", state, recipe.to_yaml(), {})
    with pytest.raises(ConversionError, match=r"official ALBEF `pretrain` layout cannot hold.*no convolutional stem"
                                              r".*encoder.image.stem=patch") as caught:
        vlkit_to_official("albef", tmp_path / "run", tmp_path / "official")
    assert any("encoder.visual_encoder.patch_embed.stem.0.weight" in p for p in caught.value.problems)
    assert any("encoder.visual_encoder.patch_embed.proj.weight" in p for p in caught.value.problems)
    assert not (tmp_path / "official").exists()
