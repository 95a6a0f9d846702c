"""Zero-shot classification: the accuracy rules against a direct count, the prompt-ensemble wiring with an
encoder whose answers are known, every image source, and the command on a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlkit.data.config import DataConfig
from vlkit.eval.config import EvalConfig
from vlkit.eval.zeroshot import class_embeddings, topk_accuracy
from vlkit.schema import ConfigError
from vlkit.tasks.base import TaskContext
from vlkit.tasks.templates import TEMPLATES, resolve_templates
from vlkit.tasks.zeroshot import ZeroShotConfig, ZeroShotTask

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.mark.parametrize("seed", range(4))
def test_topk_accuracy_matches_a_direct_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(60, 7))
    labels = rng.integers(0, 7, size=60)
    got = topk_accuracy(torch.from_numpy(logits), torch.from_numpy(labels))
    ranks = [int((logits[i] > logits[i, labels[i]]).sum()) for i in range(60)]  # classes scored higher
    assert got["top1"] == pytest.approx(100 * np.mean([r < 1 for r in ranks]))
    assert got["top5"] == pytest.approx(100 * np.mean([r < 5 for r in ranks]))
    per_class = [np.mean([ranks[i] == 0 for i in range(60) if labels[i] == c]) for c in np.unique(labels)]
    assert got["mean_class_acc"] == pytest.approx(100 * np.mean(per_class))


class ColourEncoder(torch.nn.Module):
    """Knows colours only: text feature = one-hot of the colour words in the prompt; image feature =
    one-hot of the image's dominant channel. Records the prompts' token rows."""

    def __init__(self, colour_ids: list[int]) -> None:
        super().__init__()
        self.colour_ids = colour_ids
        self.texts_seen = 0

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        self.texts_seen += input_ids.shape[0]
        hits = torch.stack([(input_ids == i).any(1).float() for i in self.colour_ids], 1)
        return SimpleNamespace(feat=F.normalize(hits + 1e-3, dim=-1))

    def encode_image(self, images: torch.Tensor) -> SimpleNamespace:
        means = images.mean((2, 3))  # [B, 3] normalized RGB means
        return SimpleNamespace(feat=F.one_hot(means.argmax(1), 3).float())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from vlkit.data.synthetic.lexicon import all_words
    from vlkit.data.synthetic.tokenizer import train_tokenizer
    from vlkit.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer([" ".join(all_words())] * 4, folder, 200)
    return load_tokenizer(folder)


def context(tokenizer, source=None) -> tuple[TaskContext, ColourEncoder]:
    encoder = ColourEncoder([tokenizer.convert_tokens_to_ids(c) for c in COLOURS])
    data = DataConfig(source={"type": "synthetic"}, normalize="imagenet")
    ctx = TaskContext(encoder, {}, source, tokenizer, data, EvalConfig(batch_size=4), 16, torch.device("cpu"))
    return ctx, encoder


def write_images(folder: Path, colour: str, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        Image.new("RGB", (20, 20), COLOURS[colour]).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def test_class_embeddings_average_the_templates(tokenizer) -> None:
    ctx, encoder = context(tokenizer)
    emb = class_embeddings(encoder, ctx.tokenize, ["red", "blue"], ["a {} object", "the {} shape", "{}"],
                           batch_size=2, device=torch.device("cpu"))
    assert encoder.texts_seen == 6 and emb.shape == (2, 3)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert emb[0].argmax() == 0 and emb[1].argmax() == 2


def test_image_folder_and_annotation_sources_classify_perfectly(tokenizer, tmp_path: Path) -> None:
    for colour, count in (("blue", 3), ("green", 2), ("red", 4)):  # sorted folder order: blue, green, red
        write_images(tmp_path / "folders" / colour, colour, count)
    ctx, _ = context(tokenizer)
    metrics = ZeroShotTask(ZeroShotConfig(image_folder=str(tmp_path / "folders"),
                                          templates=["a {} object", "{}"])).evaluate(ctx)
    assert metrics["top1"] == 100.0 and metrics["n_images"] == 9 and metrics["n_classes"] == 3
    # with names that disagree with the folders, the classification follows the names: red images → `blue`
    wrong = ZeroShotTask(ZeroShotConfig(image_folder=str(tmp_path / "folders"), classes=["red", "green", "blue"],
                                        templates="plain")).evaluate(ctx)
    assert wrong["top1"] == pytest.approx(100 * 2 / 9)  # only the green images stay right

    entries = [{"image": f"folders/{c}/0.png", "label": c} for c in ("red", "green", "blue")]
    entries.append({"image": "folders/red/1.png", "label": 2})  # an index into the sorted names: red
    (tmp_path / "ann.json").write_text(json.dumps(entries))
    by_json = ZeroShotTask(ZeroShotConfig(annotations=str(tmp_path / "ann.json"), image_root=str(tmp_path),
                                          templates="photo")).evaluate(ctx)
    assert by_json["top1"] == 100.0 and by_json["n_images"] == 4


def test_bad_zero_shot_inputs_are_named(tokenizer, tmp_path: Path) -> None:
    from vlkit.data.json_dataset import AnnotationError
    from vlkit.data.sources import JsonPairsConfig, JsonPairsSource

    with pytest.raises(ConfigError, match="not both"):
        ZeroShotConfig(image_folder="a", annotations="b")
    with pytest.raises(ConfigError, match="no template set `fotos`"):
        ZeroShotConfig(templates="fotos")
    with pytest.raises(ValueError, match="one `{}`"):
        resolve_templates(["no placeholder"])
    assert all("{}" in t for ts in TEMPLATES.values() for t in ts)
    (tmp_path / "ann.json").write_text(json.dumps([{"image": "x.png", "label": 7}]))
    ctx, _ = context(tokenizer)
    with pytest.raises(AnnotationError, match="entry 0"):
        ZeroShotTask(ZeroShotConfig(annotations=str(tmp_path / "ann.json"), classes=["a", "b"])).evaluate(ctx)
    source = JsonPairsSource(JsonPairsConfig(splits={"test": ["t.json"]}))
    ctx, _ = context(tokenizer, source)
    with pytest.raises(ValueError, match="no classification split"):
        ZeroShotTask(ZeroShotConfig()).evaluate(ctx)


def test_synthetic_classes_follow_the_largest_object(tmp_path: Path) -> None:
    from vlkit.data.synthetic import SynthConfig, ensure, read_scenes
    from vlkit.data.synthetic.classification import largest_object_classes

    folder = ensure(tmp_path, SynthConfig(train_images=8, val_images=2, test_images=40))
    data = largest_object_classes(folder, "test", "shape")
    scenes = {s.image: s for s in read_scenes(folder, "test")}
    assert 0 < len(data.images) <= 40 and data.classes == ["circle", "square", "triangle", "diamond", "cross"]
    for path, label in zip(data.images, data.labels, strict=True):
        scene = scenes[path.relative_to(folder).as_posix()]
        biggest = max(scene.objects, key=lambda o: o.extent)
        assert biggest.shape == data.classes[label]


@pytest.mark.parametrize("name", ["albef/tiny", "vlmo/tiny", "dual/tiny"])
def test_zero_shot_runs_on_every_encoder_family(name: str, tmp_path: Path, small_data: list[str]) -> None:
    from vlkit.eval.checkpoint_eval import task_metrics
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import Pretraining

    recipe = load_recipe(name, [*small_data, f"data.source.root={tmp_path / 'data'}", "eval.batch_size=8",
                                "task={type: zeroshot}"])
    run = Pretraining(recipe, tmp_path / "run", train_data=False)
    run.model.eval()
    metrics = task_metrics(run, recipe)
    assert metrics["n_classes"] == 6 and metrics["n_images"] > 0 and 0 <= metrics["top1"] <= 100
