"""Fine-tuning downstream tasks: tiny models fine-tuned on the synthetic VE, NLVR2 and VQA annotations beat
chance; init_from, the task readers, the VQA metric, distillation and head learning rates."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vlkit.cli import EXIT_RECIPE_ERROR, main
from vlkit.data.formats.task_data import (
    answer_vocabulary,
    parse_nlvr2,
    parse_ve,
    parse_vqa,
    read_task_files,
    soft_scores,
)
from vlkit.data.json_dataset import AnnotationError
from vlkit.eval.classification import mean_vqa_accuracy, vqa_accuracy
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining, run_pretraining


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("task-data")


@pytest.mark.slow
@pytest.mark.parametrize(("task", "steps"), [("ve", 120), ("nlvr2", 120), ("vqa", 300)])
def test_fine_tuning_from_scratch_beats_chance(task: str, steps: int, data_root: Path, tmp_path: Path,
                                                task_recipe) -> None:
    """Measured on 2 CPU cores (torch 2.15): VE 66.7 % (chance 33.3), NLVR2 62.5 % (majority 50),
    VQA 43.6 % (always the most frequent answer: 11.0), ~50 s for the three."""
    recipe = task_recipe(data_root, f"task={{type: {task}}}", f"train.steps={steps}", "train.head_lr_mult=10")
    metrics = run_pretraining(recipe, tmp_path / "run", progress=False)
    if task == "ve":
        assert metrics["acc"] >= 50.0 and metrics["n"] == 360
    elif task == "nlvr2":
        assert metrics["acc"] >= metrics["majority_acc"] + 5.0 and metrics["n"] == 120
    else:
        assert metrics["vqa_acc"] >= metrics["most_frequent_acc"] + 20.0 and metrics["n_answers"] > 10
    evaluated = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "run" / "recipe.yaml"), "--checkpoint", str(tmp_path / "run"),
                 "--out", str(evaluated)]) == 0
    again = json.loads((evaluated / "metrics.json").read_text())
    key = "vqa_acc" if task == "vqa" else "acc"
    assert again[key] == pytest.approx(metrics[key], abs=1e-9)  # eval of the checkpoint = end-of-run figure


def test_init_from_loads_the_pretrained_encoder_and_adds_the_head(data_root: Path, tmp_path: Path,
                                                                  task_recipe) -> None:
    from vlkit.weights import checkpoints as ckpt

    pre = tmp_path / "pre"
    run_pretraining(task_recipe(data_root, "train.steps=2", "eval.k_test=4"), pre, progress=False)
    saved = ckpt.load(ckpt.latest_checkpoint(pre / "checkpoints"))["model"]
    run = Pretraining(task_recipe(data_root, "task={type: ve}", f"init_from={pre}"), tmp_path / "ft", train_data=False)
    state = run.model.state_dict()
    encoder_keys = [k for k in state if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(state[k], saved[k]) for k in encoder_keys)
    head = [k for k in state if k.startswith("objectives.ve.head.")]
    assert head and not any(k in saved for k in head)

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Pretraining(task_recipe(data_root, "task={type: ve}", f"init_from={tmp_path / 'none'}"), tmp_path / "x",
                    train_data=False)


def test_finetune_command_needs_a_task_and_dual_encoders_cannot_fuse(data_root: Path, tmp_path: Path,
                                                                     task_data: list[str]) -> None:
    assert main(["finetune", "albef/tiny", f"data.source.root={data_root}", *task_data,
                 "--out", str(tmp_path / "r")]) == EXIT_RECIPE_ERROR
    recipe = load_recipe("dual/tiny", [*task_data, f"data.source.root={data_root}", "task={type: nlvr2}"])
    with pytest.raises(ValueError, match="no fusion layers"):
        Pretraining(recipe, tmp_path / "dual", train_data=False)


# ---------------------------------------------------------------------------------------------- metrics
def test_vqa_accuracy_is_the_official_leave_one_out_average() -> None:
    ten = ["cat"] * 3 + ["dog"] * 7
    assert vqa_accuracy("cat", ten) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)  # 0.9
    assert vqa_accuracy("dog", ten) == pytest.approx(1.0)
    assert vqa_accuracy("cow", ten) == 0.0
    assert vqa_accuracy("cat", ["cat", "dog", "dog", "dog", "dog"]) == pytest.approx(1 / 5 * 0 + 4 / 5 * (1 / 3))
    assert mean_vqa_accuracy(["dog", "cow"], [ten, ten]) == pytest.approx(50.0)


def test_answer_vocabulary_and_soft_scores() -> None:
    entries = [parse_vqa({"image": "a.png", "question": "q?", "answer": a}, Path("."), i)
               for i, a in enumerate([["yes", "yes", "no"], ["2", "yes", "2", "2", "2"], "blue"])]
    vocab = answer_vocabulary(entries)
    assert vocab == ["2", "yes", "blue", "no"]  # by count (4, 3, 1, 1), ties alphabetical
    assert answer_vocabulary(entries, min_count=2) == ["2", "yes"]
    index = {a: i for i, a in enumerate(vocab)}
    assert soft_scores(entries[0].answers, index).tolist() == pytest.approx([0, 2 / 3, 0, 1 / 3])
    assert soft_scores(entries[1].answers, index).tolist() == pytest.approx([1, 1 / 3, 0, 0])


def test_task_readers_skip_malformed_entries_and_reject_wrong_files(tmp_path: Path) -> None:
    ve = [{"image": "a.png", "sentence": "a red circle", "label": "entailment"},
          {"image": "a.png", "sentence": "", "label": "neutral"},
          {"image": "a.png", "sentence": "x", "label": "maybe"}]
    (tmp_path / "ve.json").write_text(json.dumps(ve))
    entries, skipped = read_task_files([tmp_path / "ve.json"], tmp_path, parse_ve)
    assert [e.label for e in entries] == [2] and skipped == 2
    with pytest.raises(AnnotationError, match="2 of 3 entries are malformed"):
        read_task_files([tmp_path / "ve.json"], tmp_path, parse_ve, max_bad_fraction=0.5)
    nlvr = [{"images": ["a.png", "b.png"], "sentence": "s", "label": "False"}, {"images": ["a.png"], "sentence": "s",
                                                                                 "label": "True"}]
    (tmp_path / "nlvr.json").write_text(json.dumps(nlvr))
    entries, skipped = read_task_files([tmp_path / "nlvr.json"], tmp_path, parse_nlvr2)
    assert len(entries[0].images) == 2 and entries[0].label == 0 and skipped == 1
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(AnnotationError, match="JSON list"):
        read_task_files([tmp_path / "obj.json"], tmp_path, parse_ve)


# ---------------------------------------------------------------------------------------------- training parts
def test_classify_distillation_mixes_teacher_targets(tmp_path: Path) -> None:
    """With α = 0.4 the loss is 0.6 · CE(labels) + 0.4 · CE(softmax(teacher logits)), computed by hand."""
    from vlkit.heads.classifier import ClassifierHead
    from vlkit.objectives.classify import Classify, ClassifyConfig
    from vlkit.objectives.distill import DistillConfig

    torch.manual_seed(0)
    cfg = ClassifyConfig(type="classify", num_classes=3, distill=DistillConfig(alpha=0.4))
    objective = Classify(cfg, "ve", head=ClassifierHead(4, 4, 3))
    teacher_head = torch.nn.Linear(4, 3)
    online, offline = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 1, 0])

    class FakeStep:
        def __init__(self) -> None:
            self.batch = SimpleNamespace(size=5, idx=torch.arange(5), extras={"labels": labels})
            self.index = 10

        def fuse(self, **_: object) -> SimpleNamespace:
            return SimpleNamespace(cls=online)

        teacher_steps = 10
        teacher_ready = True
        teacher = SimpleNamespace(fuse=lambda **_: SimpleNamespace(cls=offline),
                                  module=lambda name: teacher_head)

    loss = objective(FakeStep()).loss
    logits, soft = objective.head(online), F.softmax(teacher_head(offline), -1)
    expected = 0.6 * F.cross_entropy(logits, labels) - 0.4 * (soft * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)


def test_head_lr_multiplier_puts_heads_in_their_own_groups(data_root: Path, tmp_path: Path, task_recipe) -> None:
    run = Pretraining(task_recipe(data_root, "task={type: ve}", "train.head_lr_mult=20", "train.lr=1e-4"),
                      tmp_path / "r", train_data=False)
    trainer = run.trainer(progress=False)
    head_params = {id(p) for p in run.model.objectives["ve"].head.parameters()}
    for group in trainer.optimizer.param_groups:
        is_head = {id(p) in head_params for p in group["params"]}
        assert len(is_head) == 1  # a group holds heads only or none
        assert group["initial_lr"] == pytest.approx(2e-3 if is_head.pop() else 1e-4)


FINETUNE_RECIPES = [f"finetune/{family}/{task}_tiny" for family, tasks in
                    (("albef", ("ve", "nlvr2", "vqa", "retrieval")), ("vlmo", ("ve", "nlvr2", "vqa", "retrieval")),
                     ("dual", ("retrieval",))) for task in tasks]


@pytest.mark.parametrize("name", FINETUNE_RECIPES)
def test_every_shipped_finetune_recipe_trains_and_evaluates(name: str, tmp_path: Path,
                                                            small_data: list[str]) -> None:
    recipe = load_recipe(name, [*small_data, f"data.source.root={tmp_path / 'data'}", "train.steps=2",
                                "train.batch_size=8", "train.warmup_steps=1", "eval.batch_size=8", "eval.k_test=4",
                                "train.ckpt_every=0"])
    assert recipe.task is not None and recipe.init_from is None
    metrics = run_pretraining(recipe, tmp_path / "run", progress=False)
    expected = {"ve": "acc", "nlvr2": "acc", "vqa": "vqa_acc", "retrieval": "r_mean"}[recipe.task.type]
    assert expected in metrics and metrics["steps"] == 2
