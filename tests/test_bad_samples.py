"""Bad data costs a sample (counted, named in ``bad_samples.jsonl``), never the run: captions that are
not valid Unicode, files that are huge, endless or not regular, decompression bombs, damaged tar shards,
and data smaller than one batch."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import signal
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from vlkit.core.errors import UserError
from vlkit.data.bad_samples import BadSample, BadSampleLog, summarize
from vlkit.data.collate import PretrainCollate
from vlkit.data.formats.task_data import parse_ve, read_task_files
from vlkit.data.image_files import list_images
from vlkit.data.json_dataset import (
    AnnotationError,
    AnnotationPart,
    ImageFolderList,
    PairDataset,
    Sample,
    load_image,
    read_annotation_list,
    read_parts,
)
from vlkit.data.safe_io import MAX_IMAGE_BYTES, Unusable, decode_image, read_bounded
from vlkit.data.single_modality import TextCorpus
from vlkit.data.sources import JsonPairsConfig, JsonPairsSource
from vlkit.data.tokenizer import load_tokenizer
from vlkit.data.tools.filtering import FilterRules, filter_json_dataset
from vlkit.data.tools.pack import pack_json_dataset
from vlkit.data.training_set import TooFewSamples, TrainingRequest
from vlkit.data.webdataset_source import NoReadableShards, ShardStream, WebDatasetConfig, WebDatasetSource

SURROGATE = "a red \ud800 circle"  # what json.loads makes of "a red \\ud800 circle"


# ---------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body blocks, e.g. on opening a FIFO."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def png(width: int = 8, height: int = 8, seed: int = 0) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(out, format="JPEG")
    return out.getvalue()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[int]:
    """Write ``members`` as a tar (USTAR headers); the header offset of each member."""
    offsets = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            offsets.append(tar.offset)
            tar.addfile(info, io.BytesIO(data))
    return offsets


def stream(shards: list[Path], bad: BadSampleLog | None = None, **kw: Any) -> ShardStream:
    return ShardStream([str(s) for s in shards], to_tensor, seed=0, epoch_samples=10_000, bad=bad, **kw)


@pytest.fixture
def strange_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a directory, an oversized (sparse) file and a path to ``/dev/zero``."""
    folder = tmp_path / "strange"
    folder.mkdir()
    os.mkfifo(folder / "fifo.png")
    (folder / "dir.png").mkdir()
    with open(folder / "huge.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing written, nothing read
    return {"fifo": folder / "fifo.png", "dir": folder / "dir.png", "huge": folder / "huge.png",
            "zero": Path("/dev/zero")}


# ---------------------------------------------------------------------------------------------- 1. Unicode
def test_a_lone_surrogate_crashes_the_tokenizer(small_synthetic: Path) -> None:
    """The observation: the fast tokenizer rejects the whole batch."""
    tokenizer = load_tokenizer(small_synthetic / "tokenizer")
    with pytest.raises(TypeError):
        tokenizer(["fine", SURROGATE])


def test_annotation_entries_with_invalid_unicode_are_skipped_and_named(tmp_path: Path) -> None:
    items = [{"image": "a.png", "caption": "fine"}, {"image": "b.png", "caption": SURROGATE},
             {"image": "c.png", "caption": ["fine", SURROGATE]},
             {"image": "d.png", "caption": ["x"], "hard_negatives": [["y \udfff"]]}]
    (tmp_path / "ann.json").write_text(json.dumps(items))  # json.dumps writes the \ud800 escapes
    assert "\\ud800" in (tmp_path / "ann.json").read_text()
    bad = BadSampleLog(tmp_path / "bad_samples.jsonl")
    read = read_parts([AnnotationPart(tmp_path / "ann.json", tmp_path)], bad=bad)
    assert [e.image.name for e in read.entries] == ["a.png"] and read.skipped == 3
    named = lines(tmp_path / "bad_samples.jsonl")
    assert [(n["phase"], n["index"], n["image"]) for n in named] == [("annotations", 1, "b.png"),
                                                                       ("annotations", 2, "c.png"),
                                                                       ("annotations", 3, "d.png")]
    assert "caption 0 is not valid Unicode: lone surrogate U+D800 at character 6" in named[0]["reason"]
    assert "caption 1" in named[1]["reason"] and "hard-negative" in named[2]["reason"]
    assert named[0]["source"] == str(tmp_path / "ann.json")


def test_task_entries_and_text_lines_with_invalid_unicode_are_skipped(tmp_path: Path) -> None:
    assert parse_ve({"image": "a.png", "sentence": SURROGATE, "label": "neutral"}, tmp_path, 0) \
        == "no `sentence` (a non-empty string of valid Unicode)"
    (tmp_path / "ve.json").write_text(json.dumps([{"image": "a.png", "sentence": "ok", "label": "neutral"},
                                                  {"image": "b.png", "sentence": SURROGATE, "label": "neutral"}]))
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    entries, skipped = read_task_files([tmp_path / "ve.json"], tmp_path, parse_ve, bad_log=bad)
    assert len(entries) == 1 and skipped == 1 and entries[0].source == str(tmp_path / "ve.json")
    assert [(n["phase"], n["index"]) for n in lines(tmp_path / "bad.jsonl")] == [("annotations", 1)]

    corpus_file = tmp_path / "texts.jsonl"
    corpus_file.write_text("\n".join(json.dumps({"text": t}) for t in ["one", SURROGATE, "three"]) + "\n")
    bad = BadSampleLog(tmp_path / "corpus_bad.jsonl")
    corpus = TextCorpus([corpus_file], bad=bad)
    assert [corpus[i].text for i in range(len(corpus))] == ["one", "three"] and corpus.skipped == 1
    (named,) = lines(tmp_path / "corpus_bad.jsonl")
    assert named["index"] == 1 and "lone surrogate" in named["reason"]


def test_the_collate_drops_a_sample_whose_caption_cannot_be_tokenized(small_synthetic: Path) -> None:
    collate = PretrainCollate(load_tokenizer(small_synthetic / "tokenizer"), max_length=16)
    image = torch.zeros(3, 4, 4)
    batch = collate([Sample(image, "a red circle", 1, 0), Sample(image, SURROGATE, 2, 1), None])
    assert batch.size == 1 and batch.skipped == 2 and batch.idx.tolist() == [1]


def test_webdataset_captions_that_are_not_valid_unicode_are_skipped_and_named(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.jpg", jpeg()), ("a.txt", b"fine"),
                      ("b.jpg", jpeg()), ("b.json", b'{"caption": "a \\ud800 b"}'),
                      ("c.jpg", jpeg()), ("c.txt", b"\xed\xa0\x80 surrogate bytes"),
                      ("d.jpg", jpeg()), ("d.json", b"{not json"),
                      ("e.jpg", jpeg())])
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    reader = stream([shard], bad)
    samples = list(reader)
    assert [s.caption if s is not None else None for s in samples] == ["fine", None, None, None, None]
    assert reader.skipped == 4
    reasons = {n["key"]: (n["phase"], n["reason"]) for n in lines(tmp_path / "bad.jsonl")}
    assert reasons["b"] == ("caption", "a caption is not valid Unicode: lone surrogate U+D800 at character 2")
    assert reasons["c"] == ("caption", "the .txt member is not UTF-8")
    assert reasons["d"] == ("caption", "the .json member is not JSON")
    assert reasons["e"] == ("caption", "no caption (no .txt or .json member)")


# ---------------------------------------------------------------------------------------------- 2. files
def test_unusable_files_are_refused_without_being_read(strange_files: dict[str, Path], tmp_path: Path) -> None:
    with deadline():
        for name, fragment in [("fifo", "a FIFO (named pipe), not a regular file"),
                               ("dir", "a directory, not a regular file"),
                               ("huge", f"{MAX_IMAGE_BYTES + 1} bytes, more than the 64.0 MiB limit"),
                               ("zero", "a character device, not a regular file")]:
            with pytest.raises(Unusable, match=fragment.replace("(", r"\(").replace(")", r"\)")):
                read_bounded(strange_files[name], MAX_IMAGE_BYTES)
            assert load_image(strange_files[name]) is None
        with pytest.raises(Unusable, match="missing"):
            read_bounded(tmp_path / "nothing.png", 10)
    # a regular file that holds more than its size says (procfs reports 0 bytes): cut off at the cap
    with pytest.raises(Unusable, match="more than the 10 B limit"):
        read_bounded("/proc/self/status", 10)
    (tmp_path / "small.png").write_bytes(png())
    assert read_bounded(tmp_path / "small.png", 10_000) == png()


def test_decompression_bombs_are_refused_with_a_reason_not_a_warning(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.png").write_bytes(png(30, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 900 pixels: PIL would only warn (below 2×)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(Unusable, match=r"decompression bomb: Image size \(900 pixels\) exceeds limit of 600"):
            decode_image(tmp_path / "big.png")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # beyond 2×: PIL raises
        with pytest.raises(Unusable, match="decompression bomb"):
            decode_image(tmp_path / "big.png")
        assert load_image(png(30, 30)) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(tmp_path / "big.png").size == (30, 30)


def test_annotation_and_text_files_that_are_not_regular_are_errors(strange_files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    with deadline():
        with pytest.raises(AnnotationError, match="FIFO"):
            read_annotation_list(strange_files["fifo"], "x")
        with pytest.raises(AnnotationError, match="character device"):
            read_annotation_list(strange_files["zero"], "x")
        with pytest.raises(AnnotationError, match="FIFO"):
            TextCorpus([strange_files["fifo"]])
        with pytest.raises(AnnotationError, match="FIFO"):
            ImageFolderList([strange_files["fifo"]], to_tensor)[0]
    assert issubclass(AnnotationError, UserError)


def test_overlong_text_lines_are_skipped_in_bounded_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlkit.data import single_modality

    monkeypatch.setattr(single_modality, "MAX_LINE_BYTES", 64)
    path = tmp_path / "t.txt"
    path.write_bytes(b"short one\n" + b"x" * 1000 + b"\nshort two\n" + b"y" * 100)  # the last line has no newline
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    index = single_modality.TextFileIndex.build(path, bad_log=bad, max_line_bytes=64)
    assert index.lines == 4 and index.bad == 2 and len(index.offsets) == 2
    assert [(n["index"], n["reason"]) for n in lines(tmp_path / "bad.jsonl")] == \
        [(1, "a line longer than 64 B"), (3, "a line longer than 64 B")]


def test_a_symbolic_link_loop_does_not_make_the_image_listing_endless(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(png())
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    with deadline():
        assert list_images([tmp_path / "a"]) == [tmp_path / "a" / "b" / "x.png"]


def training_entries(tmp_path: Path, strange: dict[str, Path], count: int = 6) -> Path:
    """``ann.json``: ``count`` good images, then one entry per strange file, a missing and a garbage image."""
    items = []
    for i in range(count):
        (tmp_path / f"{i}.png").write_bytes(png(seed=i))
        items.append({"image": f"{i}.png", "caption": f"picture {i}"})
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    for path in [*strange.values(), tmp_path / "missing.png", tmp_path / "garbage.png"]:
        items.append({"image": str(path), "caption": "strange"})
    (tmp_path / "ann.json").write_text(json.dumps(items))
    return tmp_path / "ann.json"


def test_pack_skips_unusable_images_and_names_every_one(tmp_path: Path, strange_files: dict[str, Path]) -> None:
    annotations = training_entries(tmp_path, strange_files)
    items = json.loads(annotations.read_text())
    items += [{"image": "missing.png", "caption": f"again {i}"} for i in range(45)]  # 51 bad in all
    items.append({"image": "0.png", "caption": SURROGATE})
    annotations.write_text(json.dumps(items))
    with deadline(60):
        report = pack_json_dataset([annotations], tmp_path, tmp_path / "out", shard_size=4)
    assert report.samples == 6 and report.skipped == 52 and len(report.skipped_paths) == 20
    assert report.bad_samples == str(tmp_path / "out" / "bad_samples.jsonl")
    named = lines(tmp_path / "out" / "bad_samples.jsonl")
    assert len(named) == 52 and sorted(n["index"] for n in named) == list(range(6, 58))
    reasons = {n["index"]: n["reason"] for n in named}
    assert "FIFO" in reasons[6] and "directory" in reasons[7] and "more than the 64.0 MiB limit" in reasons[8]
    assert "character device" in reasons[9] and reasons[10] == "missing" and "Pillow" in reasons[11]
    assert "lone surrogate" in reasons[57] and Counter(n["phase"] for n in named) == {"image": 51, "annotations": 1}
    pack_report = json.loads((tmp_path / "out" / "pack_report.json").read_text())
    assert pack_report["shard_samples"] == {"shard-00000.tar": 4, "shard-00001.tar": 2}
    again = pack_json_dataset([annotations], tmp_path, tmp_path / "out", shard_size=4)  # the file is written anew
    assert again.skipped == 52 and len(lines(tmp_path / "out" / "bad_samples.jsonl")) == 52


def test_filter_names_every_dropped_entry_and_refuses_strange_files(tmp_path: Path,
                                                                    strange_files: dict[str, Path]) -> None:
    annotations = training_entries(tmp_path, strange_files)
    with deadline(60):
        report = filter_json_dataset([annotations], tmp_path, tmp_path / "out", FilterRules(min_short_side=1),
                                     workers=2)
    assert report.removed["unreadable"].entries == 6
    named = lines(tmp_path / "out" / "bad_samples.jsonl")
    reasons = {n["index"]: n["reason"] for n in named if n["phase"] == "image"}
    assert sorted(reasons) == list(range(6, 12)) and "FIFO" in reasons[6] and "64.0 MiB" in reasons[8]
    assert all(r.startswith("unreadable: ") for r in reasons.values())
    # caption rules name each dropped caption: "picture N" has 2 words, below min_words=3
    assert Counter(n["phase"] for n in named)["caption"] == 6


def test_training_images_that_cannot_be_used_are_skipped_with_their_reason(tmp_path: Path,
                                                                          strange_files: dict[str, Path]) -> None:
    annotations = training_entries(tmp_path, strange_files)
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    entries = read_parts([AnnotationPart(annotations, tmp_path)], bad=bad).entries
    dataset = PairDataset(entries, to_tensor, bad=bad)
    with deadline():
        got = [dataset[k] for k in range(2 * len(entries))]  # two epochs
    assert sum(s is None for s in got) == 12 and dataset.failures == 12  # counted per epoch
    named = lines(tmp_path / "bad.jsonl")
    assert len(named) == 6 and {n["phase"] for n in named} == {"image"}  # named once
    assert [n["index"] for n in named] == list(range(6, 12))


def test_oversized_tar_members_are_not_read(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.jpg", jpeg()), ("a.txt", b"fine"), ("b.png", png(64, 64)), ("b.txt", b"big"),
                      ("c.jpg", jpeg()), ("c.txt", b"also fine")])
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    reader = stream([shard], bad, max_member_bytes=2000)
    assert [s.caption if s is not None else None for s in reader] == ["fine", None, "also fine"]
    (named,) = lines(tmp_path / "bad.jsonl")
    assert named["key"] == "b" and named["phase"] == "image"
    assert "member b.png holds" in named["reason"] and "more than the 2.0 KiB limit (not read)" in named["reason"]


# ---------------------------------------------------------------------------------------------- 3. shards
def damaged_shard(tmp_path: Path, samples: int = 202, corrupt: int | None = 10) -> tuple[Path, list[int]]:
    members = [(f"{i:05d}.{ext}", data) for i in range(samples)
               for ext, data in (("jpg", jpeg()), ("txt", f"c{i}".encode()))]
    shard = tmp_path / "shard-00000.tar"
    offsets = write_tar(shard, members)
    if corrupt is not None:
        raw = bytearray(shard.read_bytes())
        header = offsets[2 * corrupt]  # the image member of sample `corrupt`
        raw[header + 148:header + 156] = b"garbage\0"  # its checksum
        shard.write_bytes(bytes(raw))
    return shard, offsets


def test_a_corrupt_tar_header_costs_one_sample_not_the_rest_of_the_shard(tmp_path: Path) -> None:
    """The observation: webdataset's reader dropped 192 of 202 samples silently. Now the reader
    resynchronises after the corrupt header; the sample that lost its image is skipped and named, and
    the shard is named as damaged."""
    shard, _ = damaged_shard(tmp_path)
    (tmp_path / "pack_report.json").write_text(json.dumps({"shard_samples": {"shard-00000.tar": 202}}))
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    reader = stream([shard], bad)
    samples = list(reader)
    assert len(samples) == 202 and [i for i, s in enumerate(samples) if s is None] == [10]
    assert reader.skipped == 1 and reader.damaged_shards == 1 and reader.lost == 0
    by_phase = {n["phase"]: n for n in lines(tmp_path / "bad.jsonl")}
    assert by_phase["image"]["key"] == "00010" and "corrupt tar data at bytes" in by_phase["image"]["reason"]
    assert by_phase["shard"]["source"] == str(shard) and by_phase["shard"]["lost"] == 0
    assert "202 of 202 samples read (pack_report.json): 0 lost" in by_phase["shard"]["reason"]


def test_a_truncated_shard_counts_its_lost_samples(tmp_path: Path) -> None:
    shard, offsets = damaged_shard(tmp_path, corrupt=None)
    whole = shard.read_bytes()
    (tmp_path / "shard-00000_stats.json").write_text(json.dumps({"count": 210, "successes": 202}))
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(tmp_path / "shard-00000_stats.json", cut / "shard-00000_stats.json")
    (cut / "shard-00000.tar").write_bytes(whole[:offsets[2 * 100]])  # at a member boundary: 100 samples left
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    reader = stream([cut / "shard-00000.tar"], bad)
    assert sum(s is not None for s in reader) == 100
    assert reader.lost == 102 and reader.damaged_shards == 1
    (line,) = lines(tmp_path / "bad.jsonl")
    assert line["phase"] == "shard" and line["lost"] == 102
    assert "no end-of-archive marker" in line["reason"] and "100 of 202 samples read" in line["reason"]

    (cut / "shard-00000.tar").write_bytes(whole[:offsets[2 * 50 + 1] + 100])  # inside sample 50's caption header
    (cut / "shard-00000_stats.json").unlink()  # no expected count: the loss cannot be counted
    bad = BadSampleLog(tmp_path / "bad2.jsonl")
    reader = stream([cut / "shard-00000.tar"], bad)
    samples = list(reader)
    assert sum(s is not None for s in samples) == 50 and samples[-1] is None  # sample 50 lost its caption
    named = {n["phase"]: n for n in lines(tmp_path / "bad2.jsonl")}
    assert named["caption"]["key"] == "00050" and "the shard is cut off after it" in named["caption"]["reason"]
    assert named["shard"]["lost"] is None
    assert "the number lost is unknown" in named["shard"]["reason"]
    summary = summarize(tmp_path / "bad2.jsonl")
    assert summary.phases == {"caption": 1, "shard": 1} and summary.uncounted_shards == 1
    assert "1 damaged shards" in summary.line() and "1 with an unknown loss" in summary.line()


def test_a_damaged_shard_is_named_once_and_counted_every_epoch(tmp_path: Path) -> None:
    shard, offsets = damaged_shard(tmp_path, samples=20, corrupt=None)
    shard.write_bytes(shard.read_bytes()[:offsets[2 * 15]])
    (tmp_path / "pack_report.json").write_text(json.dumps({"shard_samples": {shard.name: 20}}))
    reader = stream([shard], BadSampleLog(tmp_path / "bad.jsonl"))
    for epoch in range(3):
        reader.set_epoch(epoch)
        assert sum(s is not None for s in reader) == 15
    assert reader.damaged_shards == 3 and reader.lost == 15
    assert summarize(tmp_path / "bad.jsonl").lost == 5 and len(lines(tmp_path / "bad.jsonl")) == 1


def test_unreadable_shards_are_named(tmp_path: Path, strange_files: dict[str, Path]) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 40)
    bad = BadSampleLog(tmp_path / "bad.jsonl")
    with deadline():
        reader = stream([tmp_path / "junk.tar", strange_files["fifo"], tmp_path / "gone.tar"], bad)
        assert list(reader) == []
    reasons = {Path(n["source"]).name: n["reason"] for n in lines(tmp_path / "bad.jsonl")}
    assert "corrupt tar data at bytes 0-512" in reasons["junk.tar"]
    assert "FIFO" in reasons["fifo.png"] and "missing" in reasons["gone.tar"]
    assert reader.read_errors == 3
    endless = stream([tmp_path / "junk.tar"], BadSampleLog(tmp_path / "bad.jsonl"), resampled=True)
    with pytest.raises(NoReadableShards, match="yielded no sample") as err:
        list(endless)
    assert isinstance(err.value, UserError) and len(lines(tmp_path / "bad.jsonl")) == 3  # named once


# ---------------------------------------------------------------------------------------------- 4. the file
def test_bad_samples_are_named_once_across_processes_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    samples = [BadSample("image", "ann.json", f"reason {i}", index=i, image=f"{i}.png") for i in range(40)]

    def worker(offset: int) -> None:
        log = BadSampleLog(path)
        for step in range(len(samples)):
            log.record(samples[(step + offset) % len(samples)])

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=worker, args=(offset,)) for offset in (0, 7, 13, 29)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    named = lines(path)  # every line parses: none torn
    assert sorted(n["index"] for n in named) == list(range(40))
    again = BadSampleLog(path)  # a resumed run appends to the same file
    assert not again.record(samples[3]) and again.counts["image"] == 1 and again.named == 0
    assert again.record(BadSample("image", "ann.json", "new", index=99))
    assert len(lines(path)) == 41


def test_a_long_line_stays_under_pipe_buf(tmp_path: Path) -> None:
    log = BadSampleLog(tmp_path / "bad.jsonl")
    log.record(BadSample("image", "x" * 10_000, "é" * 5000, index=1, image="\udcff" * 3000))
    raw = (tmp_path / "bad.jsonl").read_bytes()
    assert raw.endswith(b"\n") and len(raw) <= 2048
    (named,) = lines(tmp_path / "bad.jsonl")
    assert named["source"].startswith("xxxx") and named["index"] == 1


def test_loader_workers_name_each_bad_sample_once_over_epochs(tmp_path: Path) -> None:
    for i in range(8):
        (tmp_path / f"{i}.png").write_bytes(png(seed=i))
    items = [{"image": f"{i}.png", "caption": "c"} for i in range(8)] + \
            [{"image": f"gone{i}.png", "caption": "c"} for i in range(4)]
    (tmp_path / "ann.json").write_text(json.dumps(items))
    bad = BadSampleLog(tmp_path / "run" / "bad_samples.jsonl")
    dataset = PairDataset(read_parts([AnnotationPart(tmp_path / "ann.json", tmp_path)]).entries, to_tensor, bad=bad)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=range(5 * len(items)), num_workers=2,
                                         collate_fn=lambda s: s, multiprocessing_context="fork")
    missing = sum(s is None for batch in loader for s in batch)
    assert missing == 5 * 4  # counted every epoch
    assert sorted(n["index"] for n in lines(tmp_path / "run" / "bad_samples.jsonl")) == [8, 9, 10, 11]  # named once


def test_training_writes_bad_samples_to_the_run_folder(tmp_path: Path, strange_files: dict[str, Path],
                                                      small_synthetic: Path, caplog: pytest.LogCaptureFixture) -> None:
    """End to end: albef/tiny over ALBEF JSON with a lone-surrogate caption, a malformed entry, and images
    that are a FIFO, a directory, oversized, /dev/zero, missing and garbage; two loader workers, several
    epochs. Training finishes; every bad sample is named once in the run folder."""
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import run_pretraining

    data = tmp_path / "data"
    shutil.copytree(small_synthetic / "images", data / "images")
    items = json.loads((small_synthetic / "train.json").read_text())[:20]
    for item in items:
        item.pop("phrases", None)
        item.pop("hard_negatives", None)
    items[3]["caption"] = SURROGATE
    items += [{"image": str(p), "caption": "strange"} for p in strange_files.values()]
    items += [{"image": "images/missing.png", "caption": "gone"}, {"img": "wrong key", "caption": "x"}]
    (data / "train.json").write_text(json.dumps(items))
    shutil.copy(small_synthetic / "test.json", data / "test.json")
    source = (f"data.source={{type: json_pairs, splits: {{train: [{data / 'train.json'}], "
              f"test: [{data / 'test.json'}]}}, image_root: {data}}}")
    recipe = load_recipe("albef/tiny", [source, f"data.tokenizer={small_synthetic / 'tokenizer'}",
                                        "data.group_batches=false", "data.max_bad_fraction=0.5", "data.num_workers=2",
                                        "train.batch_size=8", "train.steps=8", "train.log_every=4",
                                        "train.warmup_steps=1", "train.ckpt_every=0", "eval.batch_size=8",
                                        "eval.k_test=4", "eval.swap_probe=false"])
    caplog.set_level(logging.WARNING)
    with deadline(600):
        metrics = run_pretraining(recipe, tmp_path / "run", progress=False)
    assert metrics["steps"] == 8 and metrics["annotations_skipped"] == 2
    named = lines(tmp_path / "run" / "bad_samples.jsonl")
    assert Counter(n["phase"] for n in named) == {"annotations": 2, "image": 5}
    assert len({(n["source"], n["index"]) for n in named}) == 7  # each once, over ~3 epochs and 2 workers
    assert metrics["images_skipped"] > 5  # counted every epoch
    reasons = " ".join(n["reason"] for n in named)
    for fragment in ("lone surrogate", "FIFO", "directory", "64.0 MiB limit", "character device", "missing"):
        assert fragment in reasons
    assert f"every skipped sample is named in {tmp_path / 'run' / 'bad_samples.jsonl'}" in caplog.text
    # the run's result counts them and says where they are named
    assert metrics["bad_samples"] == 7
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["bad_samples"] == 7
    assert f"7 bad samples (annotations 2, image 5) named in {tmp_path / 'run' / 'bad_samples.jsonl'}" in caplog.text


# ---------------------------------------------------------------------------------------------- 5. batches
def request(**kw: Any) -> TrainingRequest:
    return TrainingRequest(modality="pair", split="train", transform=to_tensor, seed=0, **kw)


def test_a_stream_that_cannot_fill_one_batch_is_refused(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    write_tar(shard, [("a.jpg", jpeg()), ("a.txt", b"x")])
    source = WebDatasetSource(WebDatasetConfig(shards=[str(shard)], epoch_samples=40))
    with pytest.raises(TooFewSamples, match=r"2 readers, 20 samples each, fewer than one micro-batch of 32") as err:
        source.training_set(request(batch_size=32, micro_batch=32, num_workers=2))
    assert isinstance(err.value, UserError) and "at least 64" in str(err.value)
    with pytest.raises(TooFewSamples, match="4 readers, 10 samples each"):
        source.training_set(request(batch_size=32, micro_batch=16, num_workers=2, world_size=2))
    assert source.training_set(request(batch_size=32, micro_batch=16, num_workers=2)).stream is not None


def test_data_smaller_than_one_batch_warns_and_none_is_refused(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(seed=i))
    (tmp_path / "train.json").write_text(json.dumps([{"image": f"{i}.png", "caption": "c"} for i in range(3)]))
    (tmp_path / "empty.json").write_text(json.dumps([{"image": "0.png"}]))
    source = JsonPairsSource(JsonPairsConfig(splits={"train": [str(tmp_path / "train.json")],
                                                     "empty": [str(tmp_path / "empty.json")]},
                                             image_root=str(tmp_path)))
    caplog.set_level(logging.WARNING)
    training = source.training_set(request(batch_size=16, micro_batch=16))
    assert training.dataset is not None and training.epoch_samples() == 3
    assert "an epoch holds 3 samples, fewer than one batch of 16" in caplog.text
    caplog.clear()
    source.training_set(request(batch_size=2, micro_batch=2))
    assert "fewer than one batch" not in caplog.text
    with pytest.raises(TooFewSamples, match="no usable entries"):
        source.training_set(TrainingRequest(modality="pair", split="empty", transform=to_tensor, seed=0))
