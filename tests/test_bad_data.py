"""ALBEF-style JSON sources at scale: several files and image roots, per-source sampling ratios, and bad
data (missing / corrupt images, malformed entries, wrong schemas) skipped, counted, reported, limited."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vlkit.data.json_dataset import AnnotationError, AnnotationPart, EpochSampler, read_parts
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import run_pretraining
from vlkit.train.trainer import TooManyBadSamples
from vlkit.weights import checkpoints as ckpt

ROOT = Path(__file__).resolve().parent.parent


def take(sampler: EpochSampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampling_ratios_repeat_and_subsample_parts_per_epoch():
    parts = [0] * 10 + [1] * 20  # items 0..9 from part 0, 10..29 from part 1
    sampler = EpochSampler(30, seed=3, parts=parts, ratios=[2.0, 0.5])
    assert sampler.epoch_length == 2 * 10 + 10
    for epoch in range(3):
        keys = sampler.epoch_keys(epoch)
        items = Counter(int(k) % 30 for k in keys)
        assert all(items[i] == 2 for i in range(10))  # ratio 2: every item twice
        drawn = [i for i in range(10, 30) if items[i]]
        assert len(drawn) == 10 and all(items[i] == 1 for i in drawn)  # ratio 0.5: a half, once each
        assert len(set(keys.tolist())) == len(keys)  # every access has its own key
    halves = [{int(k) % 30 for k in sampler.epoch_keys(e)} - set(range(10)) for e in range(4)]
    assert len({frozenset(h) for h in halves}) > 1  # the half is drawn anew each epoch
    stream = take(sampler, 95)
    assert take(EpochSampler(30, seed=3, start=37, parts=parts, ratios=[2.0, 0.5]), 58) == stream[37:]  # exact resume


def test_sampling_ratio_errors():
    with pytest.raises(ValueError, match="group batching"):
        EpochSampler(4, seed=0, groups=[0, 0, 1, 1], parts=[0, 0, 1, 1], ratios=[1.0, 2.0])
    with pytest.raises(ValueError, match="no sample"):
        EpochSampler(4, seed=0, parts=[0, 0, 1, 1], ratios=[0.0, 0.0])
    plain = EpochSampler(4, seed=0, parts=[0, 0, 1, 1], ratios=[1.0, 1.0])
    assert plain.epoch_length == 4 and sorted(plain.epoch_keys(1).tolist()) == [4, 5, 6, 7]


def write(path: Path, items: object) -> Path:
    path.write_text(json.dumps(items))
    return path


def test_parts_have_their_own_image_roots_and_a_wrong_schema_is_an_error(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture):
    good = write(tmp_path / "a.json", [{"image": "x.png", "caption": "one"}, {"image": "y.png", "caption": ["a", "b"]}])
    other = write(tmp_path / "b.json",
                  [{"image": "z.png", "caption": "two", "image_id": 9}] * 99 + [{"image": "q.png"}])
    read = read_parts([AnnotationPart(good, tmp_path / "r1"), AnnotationPart(other, tmp_path / "r2", 0.5)],
                      max_bad_fraction=0.01)
    assert [e.image for e in read.entries[:3]] == [tmp_path / "r1/x.png", tmp_path / "r1/y.png", tmp_path / "r2/z.png"]
    assert read.part_of[:3] == [0, 0, 1] and read.ratios == [1.0, 0.5] and read.skipped == 1
    assert "b.json: skipped 1 of 100" in caplog.text and "entry 99: no `caption`" in caplog.text

    coco_style = write(tmp_path / "captions_train2017.json", [{"image_id": 1, "file_name": "a.jpg", "text": "x"}] * 3)
    with pytest.raises(AnnotationError, match=r"captions_train2017.json: 3 of 3 entries.*entry 0: no `image` path"):
        read_parts([AnnotationPart(coco_style, tmp_path)], max_bad_fraction=0.01)
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        read_parts([AnnotationPart(write(tmp_path / "d.json", {"image": "a"}), tmp_path)])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(AnnotationError, match="broken.json: cannot read"):
        read_parts([AnnotationPart(tmp_path / "broken.json", tmp_path)])


# --------------------------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def json_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic world's train/test files copied into a plain ALBEF-style JSON dataset."""
    from vlkit.data.synthetic import SynthConfig, ensure

    folder = ensure(tmp_path_factory.mktemp("synth"), SynthConfig(train_images=64, val_images=4, test_images=8,
                                                                  vqa_per_image=1, ve_per_image=1, nlvr_per_image=0.5))
    out = tmp_path_factory.mktemp("json")
    shutil.copytree(folder / "images", out / "images")
    for split in ("train", "test"):
        shutil.copy(folder / f"{split}.json", out / f"{split}.json")
    shutil.copytree(folder / "tokenizer", out / "tokenizer")
    return out


def corrupt(data: Path, tmp_path: Path) -> Path:
    """A copy of ``data`` whose train split has a truncated image, a missing image, a garbage image,
    a malformed entry and an empty caption."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    items = json.loads((copy / "train.json").read_text())
    first = copy / items[0]["image"]
    first.write_bytes(first.read_bytes()[:60])  # truncated PNG
    (copy / items[1]["image"]).unlink()  # missing
    (copy / items[2]["image"]).write_bytes(b"not an image at all")
    items[3]["caption"] = ""  # empty caption: skipped at reading time
    items.append({"img": "wrong key", "caption": "x"})
    (copy / "train.json").write_text(json.dumps(items))
    return copy


def source_override(data: Path) -> str:
    """A ``data.source`` override reading ``data``'s train/test JSON files."""
    return (f"data.source={{type: json_pairs, splits: {{train: [{data / 'train.json'}], "
            f"test: [{data / 'test.json'}]}}, image_root: {data}}}")


def json_recipe(data: Path, *extra: str):
    overrides = [source_override(data),
                 f"data.tokenizer={data / 'tokenizer'}", "data.group_batches=false", "train.batch_size=16",
                 "train.log_every=2", "train.warmup_steps=1", "train.ckpt_every=0", "eval.batch_size=8",
                 "eval.k_test=4", "eval.swap_probe=false", *extra]
    return load_recipe("albef/tiny", overrides)


def test_bad_samples_are_skipped_counted_and_reported(json_data: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    data = corrupt(json_data, tmp_path)
    caplog.set_level(logging.WARNING)
    metrics = run_pretraining(json_recipe(data, "train.steps=6", "data.max_bad_fraction=0.05"), tmp_path / "run",
                              progress=False)
    assert metrics["annotations_skipped"] == 2  # the empty caption and the wrong key
    assert metrics["images_skipped"] >= 3  # 6 steps × 16 samples cover the 64 images at least once
    assert metrics["steps"] == 6 and json.loads((tmp_path / "run/metrics.json").read_text())["images_skipped"] >= 3
    items = json.loads((data / "train.json").read_text())
    for bad in items[:3]:
        assert f"cannot read image {data / bad['image']}" in caplog.text
    assert "entry 3: an empty or non-string caption" in caplog.text


def test_too_many_bad_images_stop_the_run_with_a_checkpoint(json_data: Path, tmp_path: Path):
    data = corrupt(json_data, tmp_path)
    items = json.loads((data / "train.json").read_text())
    for item in items[4:40]:
        (data / item["image"]).unlink()
    recipe = json_recipe(data, "train.steps=20", "data.max_bad_fraction=0.1")
    with pytest.raises(TooManyBadSamples, match="max_bad_fraction=0.1"):
        run_pretraining(recipe, tmp_path / "run", progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "run/checkpoints") is not None  # nothing lost: resume after fixing


@pytest.mark.slow
def test_cli_reports_a_wrong_schema_before_training(json_data: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(json_data, data)
    write(data / "train.json", [{"file_name": "a.png", "text": "x"}] * 5)
    override = source_override(data)
    proc = subprocess.run([sys.executable, "-m", "vlkit", "train", "recipes/albef/tiny.yaml", override,
                           f"data.tokenizer={data / 'tokenizer'}", "--out", str(tmp_path / "run"), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "train.json: 5 of 5 entries are malformed" in proc.stderr and "entry 0: no `image` path" in proc.stderr
    assert not (tmp_path / "run/checkpoints").exists() or not any((tmp_path / "run/checkpoints").iterdir())
