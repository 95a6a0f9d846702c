"""Tar shards: packing ALBEF JSON into shards and streaming them (epochs, ranks, workers, bad samples)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from vlkit import registry
from vlkit.data.json_dataset import Sample
from vlkit.data.synthetic import SynthConfig, ensure
from vlkit.data.tools import pack as pack_module
from vlkit.data.tools.pack import PackReport, pack_json_dataset
from vlkit.data.webdataset_source import ShardStream, WebDatasetConfig, WebDatasetSource, key_id
from vlkit.schema import ConfigError, RecipeError

N_IMAGES = 40
SHARD_SIZE = 8  # 40 images → 5 shards


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image → ``[3, H, W]`` float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def as_list(samples: list[Sample | None]) -> list[Sample | None]:
    return samples


def make_stream(shards: list[str], *, seed: int = 0, rank: int = 0, world_size: int = 1,
                **cfg: Any) -> ShardStream:
    settings: dict[str, Any] = {"epoch_samples": 1000, "resampled": False, "shuffle_buffer": 0, **cfg}
    source = WebDatasetSource(WebDatasetConfig(shards=shards, **settings))
    source.prepare()
    return source.stream(to_tensor, seed=seed, rank=rank, world_size=world_size)


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def tar_members(shards: list[Path]) -> dict[str, dict[str, bytes]]:
    """``key → {extension: bytes}`` of every member of ``shards``."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member)
                assert data is not None
                out.setdefault(key, {})[ext] = data.read()
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure(tmp_path_factory.mktemp("synth"),
                  SynthConfig(image_size=32, train_images=N_IMAGES, val_images=4, test_images=4))


@pytest.fixture(scope="module")
def packed(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> PackReport:
    return pack_json_dataset([synth / "train.json"], synth, tmp_path_factory.mktemp("packed"), shard_size=SHARD_SIZE)


# ---------------------------------------------------------------- packing and reading back


def test_pack_writes_shards_report_and_pattern(packed: PackReport) -> None:
    out = packed.shards[0].parent
    assert packed.samples == N_IMAGES and packed.skipped == 0 and packed.skipped_paths == []
    assert [p.name for p in packed.shards] == [f"shard-{i:05d}.tar" for i in range(5)]
    assert packed.pattern == f"{out}/shard-{{00000..00004}}.tar"
    assert not list(out.glob("*.tmp"))
    report = json.loads((out / "pack_report.json").read_text())
    assert report["samples"] == N_IMAGES and report["pattern"] == packed.pattern
    assert report["shards"] == [str(p) for p in packed.shards]
    members = tar_members(packed.shards)
    assert len(members) == N_IMAGES and all(set(m) == {"jpg", "json"} for m in members.values())


def test_stream_reads_every_sample_once_per_epoch_and_round_trips(synth: Path, packed: PackReport) -> None:
    annotations = {e["image"]: e for e in json.loads((synth / "train.json").read_text())}
    records = {key_id(k): json.loads(m["json"]) for k, m in tar_members(packed.shards).items()}
    stream = make_stream([packed.pattern])
    for epoch in range(2):
        stream.set_epoch(epoch)
        samples = list(stream)
        assert all(s is not None for s in samples)
        assert Counter(s.idx for s in samples) == Counter(records.keys())  # each image exactly once
        assert [s.key for s in samples] == list(range(epoch * 1000, epoch * 1000 + N_IMAGES))
    for sample in samples:
        record = records[sample.idx]
        original = annotations[record["image"]]
        assert record["caption"] == original["caption"] and record["image_id"] == original["image_id"]
        assert sample.caption in original["caption"]
        pixels = to_tensor(Image.open(synth / original["image"]).convert("RGB"))
        assert sample.image.shape == pixels.shape == (3, 32, 32)
        assert (sample.image - pixels).abs().mean() < 0.05  # JPEG re-encoding of the PNG, nothing else
    assert len({s.caption for s in samples}) > 1


def test_epoch_samples_caps_a_pass_and_resampling_is_endless_and_seeded(packed: PackReport) -> None:
    assert len(list(make_stream([packed.pattern], epoch_samples=10))) == 10
    ids = {key_id(k) for k in tar_members(packed.shards)}

    def run(seed: int, epoch: int = 0) -> list[tuple[int, str]]:
        stream = make_stream([packed.pattern], seed=seed, epoch_samples=100, resampled=True, shuffle_buffer=16)
        stream.set_epoch(epoch)
        samples = list(stream)
        assert len(samples) == 100 and [s.key for s in samples] == list(range(epoch * 100, epoch * 100 + 100))
        assert {s.idx for s in samples} <= ids
        return [(s.idx, s.caption) for s in samples]

    first = run(seed=1)
    assert run(seed=1) == first  # deterministic given (seed, start, epoch, rank, worker)
    assert run(seed=2) != first and run(seed=1, epoch=1) != first
    assert max(Counter(idx for idx, _ in first).values()) > 1  # shards drawn with replacement


def test_resize_short_shrinks_and_never_enlarges(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    picture(48, 24).save(tmp_path / "img/wide.png")
    picture(30, 60, seed=1).save(tmp_path / "img/tall.jpg", quality=95)
    small = encoded(picture(10, 14, seed=2), "JPEG")
    (tmp_path / "img/small.jpg").write_bytes(small)
    names = ["wide.png", "tall.jpg", "small.jpg"]
    annotations = [{"image": f"img/{n}", "caption": f"a {n}", "image_id": i} for i, n in enumerate(names)]
    (tmp_path / "ann.json").write_text(json.dumps(annotations))

    def packed_sizes(out: str, **kw: Any) -> dict[str, tuple[int, int]]:
        report = pack_json_dataset([tmp_path / "ann.json"], tmp_path, tmp_path / out, **kw)
        members = tar_members(report.shards).values()
        sizes = {json.loads(m["json"])["image"]: Image.open(io.BytesIO(m["jpg"])).size for m in members}
        if out == "short":
            assert next(m["jpg"] for m in members if b"small" in m["json"]) == small  # copied untouched
        return sizes

    assert packed_sizes("short", resize_short=12) == {"img/wide.png": (24, 12), "img/tall.jpg": (12, 24),
                                                      "img/small.jpg": (10, 14)}
    assert packed_sizes("big", resize_short=100) == {"img/wide.png": (48, 24), "img/tall.jpg": (30, 60),
                                                     "img/small.jpg": (10, 14)}
    assert packed_sizes("side", max_side=20)["img/wide.png"] == (20, 10)


def test_pack_skips_missing_corrupt_and_malformed_entries(tmp_path: Path) -> None:
    picture(16, 16).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    annotations = [{"image": "good.png", "caption": ["one", "two"]}, {"image": "missing.png", "caption": "x"},
                   {"image": "bad.jpg", "caption": "y"}, {"image": "good.png"}, {"image": "good.png", "caption": "z"}]
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    report = pack_json_dataset([tmp_path / "ann.json"], tmp_path, tmp_path / "out", shard_size=1, prefix="p")
    assert report.samples == 2 and report.skipped == 3
    assert sorted(Path(p).name for p in report.skipped_paths) == ["bad.jpg", "missing.png"]
    assert report.pattern == f"{tmp_path / 'out'}/p-{{00000..00001}}.tar"
    captions = [json.loads(m["json"])["caption"] for m in tar_members(report.shards).values()]
    assert sorted(captions) == [["one", "two"], ["z"]]


def test_an_interrupted_pack_leaves_only_complete_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        picture(8, 8, seed=i).save(tmp_path / f"{i}.png")
    (tmp_path / "ann.json").write_text(json.dumps([{"image": f"{i}.png", "caption": "c"} for i in range(5)]))
    real = pack_module.encode_image
    calls = []

    def failing(path: Path, **kw: Any) -> bytes | None:
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(pack_module, "encode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_json_dataset([tmp_path / "ann.json"], tmp_path, tmp_path / "out", shard_size=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-00000.tar"]  # no .tmp, no report
    assert len(tar_members([tmp_path / "out/shard-00000.tar"])) == 2


# ---------------------------------------------------------------- img2dataset-style and bad samples


def test_img2dataset_style_members_are_read(tmp_path: Path) -> None:
    image = picture(20, 12)
    shard = write_tar(tmp_path / "00000.tar", [
        ("000000000.jpg", encoded(image, "JPEG")), ("000000000.txt", b"a jpeg with a txt caption\n"),
        ("000000001.JPEG", encoded(image, "JPEG")), ("000000001.txt", b"upper-case extension"),
        ("000000001.json", json.dumps({"caption": None, "url": "http://x"}).encode()),
        ("000000002.png", encoded(image, "PNG")), ("000000002.json", json.dumps({"caption": "a png"}).encode()),
        ("000000003.webp", encoded(image, "WEBP")), ("000000003.txt", b"not this one"),
        ("000000003.json", json.dumps({"caption": ["first", "second"]}).encode()),
    ])
    samples = list(make_stream([shard]))
    assert all(s is not None for s in samples)
    captions = {s.idx: s.caption for s in samples}
    assert captions.keys() == {key_id(f"{i:09d}") for i in range(4)}
    assert captions[key_id("000000000")] == "a jpeg with a txt caption"
    assert captions[key_id("000000001")] == "upper-case extension"  # json without a caption: the txt
    assert captions[key_id("000000002")] == "a png"
    assert captions[key_id("000000003")] in ("first", "second")
    assert all(s.image.shape == (3, 12, 20) for s in samples)
    drawn = set()  # a caption list: one drawn per access (key)
    stream = make_stream([shard])
    for epoch in range(12):
        stream.set_epoch(epoch)
        drawn |= {s.caption for s in stream if s.idx == key_id("000000003")}
    assert drawn == {"first", "second"}

    other = write_tar(tmp_path / "00001.tar", [("k.jpg", encoded(image, "JPEG")),
                                               ("k.json", json.dumps({"text": "custom key"}).encode())])
    assert [s.caption for s in make_stream([other], caption_key="text")] == ["custom key"]


def test_corrupt_images_and_missing_captions_yield_none(tmp_path: Path) -> None:
    good = encoded(picture(16, 16), "JPEG")
    png = encoded(picture(16, 16), "PNG")
    shard = write_tar(tmp_path / "bad.tar", [
        ("a.jpg", good), ("a.txt", b"fine"),
        ("b.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), ("b.txt", b"corrupt image"),
        ("c.jpg", good), ("c.txt", b"   "),
        ("d.png", png[: len(png) // 2]), ("d.txt", b"truncated png"),
        ("e.jpg", good), ("e.json", json.dumps({"caption": 7}).encode()),
        ("f.txt", b"no image at all"),
        ("g.jpg", good), ("g.txt", b"also fine"),
    ])
    stream = make_stream([shard])
    samples = list(stream)
    assert [s.caption if s is not None else None for s in samples] == ["fine", None, None, None, None, None,
                                                                        "also fine"]
    assert stream.skipped == 5
    loader = torch.utils.data.DataLoader(stream, batch_size=3, collate_fn=as_list)
    assert [len(batch) for batch in loader] == [3, 3, 1]


# ---------------------------------------------------------------- ranks and workers


@pytest.mark.parametrize("shuffle_buffer", [0, 8])
def test_two_ranks_partition_the_samples(packed: PackReport, shuffle_buffer: int) -> None:
    ids = Counter(key_id(k) for k in tar_members(packed.shards))
    for epoch in range(2):
        seen: list[list[Sample]] = []
        for rank in range(2):
            stream = make_stream([packed.pattern], rank=rank, world_size=2, shuffle_buffer=shuffle_buffer)
            stream.set_epoch(epoch)
            seen.append([s for s in stream if s is not None])
        assert all(seen) and Counter(s.idx for part in seen for s in part) == ids
        assert all(s.key % 2 == rank for rank, part in enumerate(seen) for s in part)  # keys never collide


def test_resampled_ranks_draw_differently(packed: PackReport) -> None:
    draws = [[s.idx for s in make_stream([packed.pattern], rank=r, world_size=2, resampled=True, epoch_samples=40)]
             for r in range(2)]
    assert len(draws[0]) == len(draws[1]) == 20 and draws[0] != draws[1]
    with pytest.raises(ValueError, match="rank 2"):
        make_stream([packed.pattern], rank=2, world_size=2)


def test_two_loader_workers_split_the_shards(packed: PackReport) -> None:
    ids = Counter(key_id(k) for k in tar_members(packed.shards))
    stream = make_stream([packed.pattern], shuffle_buffer=4)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, collate_fn=as_list)
    for _ in range(2):
        samples = [s for batch in loader for s in batch]
        assert all(s is not None for s in samples) and Counter(s.idx for s in samples) == ids
        assert len({s.key for s in samples}) == N_IMAGES

    endless = make_stream([packed.pattern], resampled=True, epoch_samples=30, shuffle_buffer=4)
    loader = torch.utils.data.DataLoader(endless, batch_size=4, num_workers=2, collate_fn=as_list)
    samples = [s for batch in loader for s in batch]
    assert sorted(s.key for s in samples) == list(range(30))
    by_worker = [[s.idx for s in samples if s.key % 2 == w] for w in range(2)]
    assert by_worker[0] != by_worker[1]  # each worker its own seed


# ---------------------------------------------------------------- configuration


def test_config_errors_name_the_key() -> None:
    for settings, key in [({"shards": [], "epoch_samples": 1}, "shards"),
                          ({"shards": ["a.tar"], "epoch_samples": 0}, "epoch_samples"),
                          ({"shards": ["a.tar"], "epoch_samples": 5, "shuffle_buffer": -1}, "shuffle_buffer"),
                          ({"shards": ["a.tar"], "epoch_samples": 5, "caption_key": ""}, "caption_key")]:
        with pytest.raises(ConfigError) as err:
            WebDatasetConfig(**settings)
        assert err.value.key == key
    with pytest.raises(RecipeError, match="epoch_samples"):
        WebDatasetConfig.from_dict({"shards": ["a.tar"]})
    assert WebDatasetConfig.from_dict({"shards": ["a.tar"], "epoch_samples": 3}).type == "webdataset"
    assert registry.get("dataset", "webdataset").target is WebDatasetSource


def test_prepare_names_missing_shards_and_split_files(tmp_path: Path) -> None:
    (tmp_path / "s-1.tar").write_bytes(b"")
    source = WebDatasetSource(WebDatasetConfig(shards=[f"{tmp_path}/s-{{0..2}}.tar"], epoch_samples=5))
    assert source.shards == [f"{tmp_path}/s-{i}.tar" for i in range(3)]
    with pytest.raises(FileNotFoundError) as err:
        source.prepare()
    assert "s-0.tar" in str(err.value) and "s-2.tar" in str(err.value) and "s-1.tar" not in str(err.value)
    remote = WebDatasetSource(WebDatasetConfig(
        shards=["http://example.com/{0..3}.tar", "pipe:curl -s s3://x.tar", f"{tmp_path}/s-1.tar"],
        epoch_samples=5, eval_splits={"val": [str(tmp_path / "s-1.tar")]}, eval_image_root=str(tmp_path)))
    remote.prepare()  # URLs are left to webdataset
    assert remote.split_files("val") == [tmp_path / "s-1.tar"] and remote.image_root == tmp_path
    with pytest.raises(ValueError, match="val"):
        remote.split_files("test")


def test_draft_size_decodes_jpegs_reduced(tmp_path: Path) -> None:
    shard = write_tar(tmp_path / "big.tar", [("k.jpg", encoded(picture(64, 96), "JPEG")), ("k.txt", b"big")])
    source = WebDatasetSource(WebDatasetConfig(shards=[shard], epoch_samples=10, resampled=False))
    (full,) = source.stream(to_tensor, seed=0)
    (reduced,) = source.stream(to_tensor, seed=0, draft_size=16)
    assert full.image.shape == (3, 96, 64) and reduced.image.shape == (3, 24, 16)  # 1/4 DCT scale


def test_resampled_stream_of_unreadable_shards_fails_instead_of_spinning(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 40)
    stream = make_stream([str(tmp_path / "junk.tar")], resampled=True, epoch_samples=5)
    with pytest.raises(RuntimeError, match="yielded no sample"):
        list(stream)
    assert stream.read_errors > 1


def test_unreadable_and_truncated_shards_are_skipped_in_a_pass(tmp_path: Path) -> None:
    good = encoded(picture(16, 16), "JPEG")
    members = [(f"{i}.{ext}", data) for i in range(6) for ext, data in (("jpg", good), ("txt", f"c{i}".encode()))]
    whole = Path(write_tar(tmp_path / "whole.tar", members)).read_bytes()
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2])  # a shard cut off mid-way
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 40)
    stream = make_stream([str(tmp_path / n) for n in ("junk.tar", "cut.tar", "whole.tar")])
    captions = [s.caption for s in stream if s is not None]
    assert captions[-6:] == [f"c{i}" for i in range(6)] and 0 < len(captions) - 6 < 6
    assert captions[:-6] == [f"c{i}" for i in range(len(captions) - 6)]
    assert stream.read_errors >= 1


@pytest.mark.slow
def test_vlkit_data_pack_then_train_on_the_shards(tmp_path: Path) -> None:
    """End to end: `vlkit data pack` the synthetic train split into shards, train albef/tiny on them
    through `type: webdataset`, evaluate on the JSON test split."""
    import subprocess
    import sys

    from vlkit.data.synthetic import SynthConfig, ensure
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import run_pretraining

    root = Path(__file__).resolve().parent.parent
    data = ensure(tmp_path / "synth", SynthConfig(train_images=40, val_images=4, test_images=6, vqa_per_image=1,
                                                  ve_per_image=1, nlvr_per_image=0.5))
    proc = subprocess.run([sys.executable, "-m", "vlkit", "data", "pack", str(data / "train.json"),
                           "--image-root", str(data), "--out", str(tmp_path / "shards"), "--shard-size", "16",
                           "--resize-short", "48"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 40 samples in 3 shards" in proc.stdout
    pattern = str(tmp_path / "shards" / "shard-{00000..00002}.tar")
    source = (f"data.source={{type: webdataset, shards: ['{pattern}'], epoch_samples: 40, shuffle_buffer: 8, "
              f"eval_splits: {{test: [{data / 'test.json'}]}}, eval_image_root: {data}}}")
    recipe = load_recipe("albef/tiny", [source, f"data.tokenizer={data / 'tokenizer'}", "data.group_batches=false",
                                        "train.batch_size=8", "train.steps=6", "train.log_every=2",
                                        "train.warmup_steps=1", "train.ckpt_every=0", "eval.batch_size=8",
                                        "eval.k_test=4", "eval.swap_probe=false"])
    metrics = run_pretraining(recipe, tmp_path / "run", progress=False)
    assert metrics["steps"] == 6 and metrics["samples"] == 48  # six batches of 8 across epoch boundaries
    assert metrics["n_images"] == 6 and 0 <= metrics["txt_r1"] <= 100
