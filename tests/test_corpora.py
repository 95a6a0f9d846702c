"""Single-modality corpora (`image_only`, `text_only`): folders, shards and text files written on the fly,
read through multi-worker loaders into image-only and text-only batches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit import registry
from vlkit.data.corpora import ImageOnlyConfig, ImageOnlySource, TextOnlyConfig, TextOnlySource
from vlkit.data.image_files import list_images
from vlkit.data.json_dataset import AnnotationError, EpochSampler
from vlkit.data.masking import MaskingConfig, TokenMasker
from vlkit.data.single_modality import ImageOnlyCollate, TextCorpus, TextOnlyCollate
from vlkit.data.tools.pack import pack_json_dataset
from vlkit.data.transforms import train_transform
from vlkit.schema import ConfigError


def picture(seed: int, width: int = 40, height: int = 30) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture()
def image_folders(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "nested").mkdir(parents=True)
    b.mkdir()
    for i in range(5):
        picture(i).save(a / f"{i}.jpg")
    for i in range(5, 8):
        picture(i).save(a / "nested" / f"{i}.PNG")
    picture(8).save(b / "8.webp")
    (b / "9.jpg").write_bytes(b"not an image")  # corrupt: skipped and counted
    (b / "notes.txt").write_text("ignored")
    return [a, b]


def test_image_folders_list_recursively_and_load_in_workers(image_folders: list[Path]) -> None:
    files = list_images(image_folders)
    assert [f.name for f in files] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.PNG", "6.PNG", "7.PNG",
                                       "8.webp", "9.jpg"]
    source = registry.get("dataset", "image_only").target(ImageOnlyConfig(folders=[str(f) for f in image_folders]))
    source.prepare()
    assert isinstance(source, ImageOnlySource) and source.modality == "image"
    dataset = source.dataset(train_transform(16, "clip", crop_scale=(0.5, 1.0)), seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, sampler=EpochSampler(len(dataset), seed=3),
                                         collate_fn=ImageOnlyCollate(), num_workers=2)
    batches = [b for _, b in zip(range(4), loader, strict=False)]  # two epochs
    assert all(b.images.shape[1:] == (3, 16, 16) and b.input_ids is None for b in batches)
    assert sum(b.skipped for b in batches) == 2  # the corrupt file, once per epoch
    seen = Counter(int(i) for b in batches for i in b.idx)
    assert seen == Counter({i: 2 for i in range(9)})  # every readable image once per epoch
    again = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5, sampler=EpochSampler(len(dataset), seed=3),
                                                  collate_fn=ImageOnlyCollate(), num_workers=0)))
    torch.testing.assert_close(again.images, batches[0].images)  # augmentation seeded per key, not per worker


def test_image_shards_ignore_text_and_split_across_two_ranks(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    entries = []
    for i in range(12):
        picture(i).save(root / f"{i}.png")
        entries.append({"image": f"{i}.png", "caption": f"caption {i}", "image_id": i})
    (tmp_path / "ann.json").write_text(json.dumps(entries))
    report = pack_json_dataset([tmp_path / "ann.json"], root, tmp_path / "shards", shard_size=3)
    cfg = ImageOnlyConfig(shards=[report.pattern], epoch_samples=12, resampled=False, shuffle_buffer=0)
    source = ImageOnlySource(cfg)
    source.prepare()
    keys = []
    for rank in range(2):
        stream = source.dataset(train_transform(8, None), seed=0, rank=rank, world_size=2)
        batch = ImageOnlyCollate()(list(stream))
        assert batch.images.dtype == torch.uint8 and batch.images.shape == (6, 3, 8, 8) and batch.skipped == 0
        keys += batch.idx.tolist()
    assert len(set(keys)) == 12  # each shard sample exactly once over both ranks


def test_image_only_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        ImageOnlyConfig()
    with pytest.raises(ConfigError, match="positive sample count"):
        ImageOnlyConfig(shards=["x.tar"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageOnlySource(ImageOnlyConfig(folders=[str(empty)])).prepare()
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageOnlySource(ImageOnlyConfig(folders=[str(tmp_path / "nope")])).prepare()


@pytest.fixture()
def text_files(tmp_path: Path) -> list[Path]:
    txt = tmp_path / "wiki.txt"
    txt.write_text("The first sentence.\n\n   \nSecond line here\nthird ünïcode line\n", encoding="utf-8")
    jsonl = tmp_path / "books.jsonl"
    lines = [json.dumps({"text": f"book sentence {i}", "id": i}) for i in range(20)]
    lines.insert(5, "{broken json")
    lines.insert(9, json.dumps({"title": "no text field"}))
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [txt, jsonl]


def test_text_corpus_indexes_lines_and_skips_bad_ones(text_files: list[Path]) -> None:
    corpus = TextCorpus(text_files)
    assert len(corpus) == 3 + 20 and corpus.skipped == 2
    assert [corpus.text(i) for i in range(4)] == ["The first sentence.", "Second line here", "third ünïcode line",
                                                   "book sentence 0"]
    assert corpus.text(22) == "book sentence 19"
    with pytest.raises(AnnotationError, match=r"books.jsonl: 2 of 22 lines .* \"text\" string"):
        TextCorpus(text_files, max_bad_fraction=0.05)
    with pytest.raises(AnnotationError, match="22 of 22"):
        TextCorpus(text_files[1:], text_key="body", max_bad_fraction=0.5)


def test_text_only_batches_are_tokenized_and_masked_in_workers(text_files: list[Path], tmp_path: Path) -> None:
    from vlkit.data.synthetic.tokenizer import train_tokenizer
    from vlkit.data.tokenizer import load_tokenizer
    from vlkit.data.tokens import TextTokens

    words = " ".join(corpus_line for f in text_files for corpus_line in f.read_text(encoding="utf-8").split())
    train_tokenizer([words] * 4, tmp_path / "tok", 120)
    tokenizer = load_tokenizer(tmp_path / "tok")
    tokens = TextTokens.from_tokenizer(tokenizer)
    masker = TokenMasker(MaskingConfig(mask_prob=0.5), tokens.mask_id, tokens.vocab_size,
                         tokens.never_masked)
    source = registry.get("dataset", "text_only").target(TextOnlyConfig(files=[str(f) for f in text_files]))
    source.prepare()
    assert isinstance(source, TextOnlySource) and source.modality == "text"
    corpus = source.dataset()
    collate = TextOnlyCollate(tokenizer, max_length=12, transforms=[masker], seed=1, padding="multiple_of_8")
    loader = torch.utils.data.DataLoader(corpus, batch_size=4, sampler=EpochSampler(len(corpus), seed=1),
                                         collate_fn=collate, num_workers=2)
    batches = [b for _, b in zip(range(5), loader, strict=False)]
    assert all(b.images is None and b.input_ids.shape[1] % 8 == 0 and b.mlm is not None for b in batches)
    ids = [int(i) for b in batches for i in b.idx]
    assert len(set(ids)) == 20 and set(ids) <= set(range(23))  # 20 of the epoch's 23 texts, none twice
    single = next(iter(torch.utils.data.DataLoader(corpus, batch_size=4, collate_fn=collate,
                                                   sampler=EpochSampler(len(corpus), seed=1))))
    assert torch.equal(single.mlm.input_ids, batches[0].mlm.input_ids)  # masking seeded per keys, not per worker
    assert single.to("cpu").images is None


def test_pretraining_refuses_pair_objectives_on_a_single_modality_source(text_files: list[Path],
                                                                         tmp_path: Path) -> None:
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import Pretraining

    source = "data.source={type: text_only, files: [" + str(text_files[0]) + "]}"
    recipe = load_recipe("albef/tiny", [source])
    with pytest.raises(ValueError, match=r"objective `itc` \(itc\) learns from image-text pair batches.*text-only"):
        Pretraining(recipe, tmp_path / "run")
    recipe = load_recipe("albef/tiny", [source, "data.modality=image"])
    with pytest.raises(ValueError, match="holds texts only; data.modality `image`"):
        Pretraining(recipe, tmp_path / "run")
