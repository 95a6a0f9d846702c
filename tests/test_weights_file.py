"""Released weights (``DIR/model.safetensors`` with the resolved recipe in its metadata) and strict
weight accounting (``strict: true``) for ``init_from`` and tower ``init`` keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlkit.cli import main
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release as weights_file
from vlkit.weights.init_from import find_checkpoint

torch.set_num_threads(1)
SMALL_DATA = ["data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8",
              "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights-data")


def recipe(root: Path, *extra: str, name: str = "albef/tiny"):
    return load_recipe(name, [*SMALL_DATA, f"data.source.root={root}", "train.batch_size=8", "train.log_every=1",
                              "eval.batch_size=8", "eval.k_test=4", "train.cpu_threads=1", *extra])


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights-run") / "run"
    run_pretraining(recipe(data_root, "train.steps=2"), out, progress=False)
    return out


def test_run_writes_weights_file_equal_to_its_checkpoint(trained: Path) -> None:
    file = trained / "model.safetensors"
    metadata = weights_file.read_metadata(file)
    assert metadata["format"] == "vlkit-weights" and metadata["step"] == "2"
    assert metadata["recipe"] == (trained / "recipe.yaml").read_text()  # the resolved recipe travels with the weights
    saved = ckpt.load(ckpt.latest_checkpoint(trained / "checkpoints"))["model"]
    loaded = weights_file.load_weights(file)
    assert loaded["step"] == 2 and sorted(loaded["model"]) == sorted(saved)
    assert all(torch.equal(loaded["model"][k], v) for k, v in saved.items())
    aliases = json.loads(metadata["aliases"])  # BERT's MLM decoder is the word-embedding matrix: stored once
    assert aliases["objectives.mlm.head.predictions.decoder.weight"] == \
        "encoder.text_encoder.embeddings.word_embeddings.weight"
    with safe_open(str(file), framework="pt") as handle:
        assert "objectives.mlm.head.predictions.decoder.weight" not in set(handle.keys())


def test_released_weights_alone_initialize_and_evaluate_like_the_checkpoint(trained: Path, data_root: Path,
                                                                           tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(trained / "model.safetensors", release)
    assert find_checkpoint(release) == release / "model.safetensors"
    run = Pretraining(recipe(data_root, f"init_from={release}", "strict=true"), tmp_path / "init", train_data=False)
    saved = ckpt.load(ckpt.latest_checkpoint(trained / "checkpoints"))["model"]
    state = run.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # loading keeps the model's tie: the decoder is still the embedding matrix, not a copy
    assert state["objectives.mlm.head.predictions.decoder.weight"].data_ptr() == \
        state["encoder.text_encoder.embeddings.word_embeddings.weight"].data_ptr()

    metrics = {}
    for name, checkpoint in (("pt", trained), ("safetensors", release / "model.safetensors")):
        assert main(["eval", str(trained / "recipe.yaml"), "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / name)]) == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["pt"]["step"] == metrics["safetensors"]["step"] == 2
    for key in ("r_mean", "txt_r1", "img_r1", "swap_acc_itm"):
        assert metrics["safetensors"][key] == metrics["pt"][key]


def test_tied_weights_stored_once_and_other_views_copied(tmp_path: Path) -> None:
    embedding = torch.nn.Embedding(5, 3)
    decoder = torch.nn.Linear(3, 5, bias=False)
    decoder.weight = embedding.weight
    table = torch.arange(12.0).reshape(3, 4)
    state = {"emb.weight": embedding.weight, "dec.weight": decoder.weight, "table": table, "row": table[1],
             "scalar": torch.tensor(0.07), "empty": torch.zeros(0)}
    path = weights_file.save_weights(tmp_path / "w.safetensors", state, recipe_yaml="seed: 0\n", step=7, samples=56)
    loaded = weights_file.load_weights(path)
    assert json.loads(weights_file.read_metadata(path)["aliases"]) == {"dec.weight": "emb.weight"}
    assert sorted(loaded["model"]) == sorted(state) and loaded["samples"] == 56 and loaded["recipe"] == "seed: 0\n"
    assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed into place


def test_foreign_safetensors_is_refused_with_advice(tmp_path: Path, data_root: Path) -> None:
    plain = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="without vlkit's metadata.*encoder.image.init"):
        Pretraining(recipe(data_root, f"init_from={plain}"), tmp_path / "x", train_data=False)


def test_save_weights_off_writes_only_the_checkpoint(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_pretraining(recipe(data_root, "train.steps=1", "train.save_weights=false"), out,
                    progress=False)
    assert ckpt.latest_checkpoint(out / "checkpoints") is not None and not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------- strict: true
def test_strict_init_from_refuses_new_weights_and_lenient_reports_them(trained: Path, data_root: Path,
                                                                        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"strict: init_from .* \d+ new"):  # the VE head is not in the checkpoint
        Pretraining(recipe(data_root, "task={type: ve}", f"init_from={trained}", "strict=true"), tmp_path / "s",
                    train_data=False)
    run = Pretraining(recipe(data_root, "task={type: ve}", f"init_from={trained}"), tmp_path / "l", train_data=False)
    (report,) = [r for r in run.weight_loads if r["tower"] == "init_from"]
    assert report["counts"]["new"] == len(report["new"]) > 0
    assert all(k.startswith("objectives.ve.") for k in report["new"])


def test_strict_tower_init_refuses_unused_checkpoint_weights(data_root: Path, tmp_path: Path, timm_vit,
                                                             save_state_dict) -> None:
    with_head = save_state_dict(timm_vit().state_dict(), tmp_path / "vit_head", "safetensors")
    image = ["encoder.image.stem=patch", f"encoder.image.init={with_head}"]
    with pytest.raises(ValueError, match=r"strict: encoder.image.init left 2 checkpoint weights unused \(head"):
        Pretraining(recipe(data_root, *image, "strict=true"), tmp_path / "s")
    headless = {k: v for k, v in timm_vit().state_dict().items() if not k.startswith("head.")}
    headless = save_state_dict(headless, tmp_path / "vit", "safetensors")
    run = Pretraining(recipe(data_root, "encoder.image.stem=patch", f"encoder.image.init={headless}", "strict=true"),
                      tmp_path / "ok")
    (report,) = run.weight_loads
    assert report["counts"]["unused"] == 0 and report["counts"]["loaded"] > 0


def test_bert_mlm_head_without_an_mlm_objective_is_unused_and_strict_refuses_it(data_root: Path, tmp_path: Path,
                                                                                 save_tiny_bert_mlm) -> None:
    save_tiny_bert_mlm(tmp_path / "bert")
    text = f"encoder.text.init={tmp_path / 'bert'}"
    run = Pretraining(recipe(data_root, text, "strict=true"), tmp_path / "with-mlm")  # the mlm head takes it
    (report,) = run.weight_loads
    assert report["counts"]["unused"] == 0 and report["counts"]["held"] > 0
    run = Pretraining(recipe(data_root, text, "objectives.mlm=null"), tmp_path / "no-mlm")
    (report,) = run.weight_loads
    assert report["counts"]["held"] == 0 and "cls.predictions.transform.dense.weight" in report["unused"]
    assert any("no objective builds the mlm head" in note for note in report["notes"])
    with pytest.raises(ValueError, match=r"strict: encoder.text.init left \d+ checkpoint weights unused \(cls"):
        Pretraining(recipe(data_root, text, "objectives.mlm=null", "strict=true"), tmp_path / "strict")
