"""Writing the dataset folder: images, ALBEF-style annotation files, the tokenizer, then metadata.

Layout of ``DIR``::

    images/{split}/{index:06d}.png        RGB images
    {split}.json                          [{"image", "caption": [...], "image_id", "group", "phrases",
                                            "hard_negatives"}]
                                          (retrieval / pre-training; ``phrases``: per caption, its noun
                                          phrases' ``span`` and object ``box``, see :func:`caption_phrases`;
                                          ``hard_negatives``: per caption, its verified-false attribute and
                                          relation swaps)
    scenes_{split}.json                   the scene behind every image (objects, background, twin links)
    {val,test}_swaps.json                 [{"image", "image_id", "caption", "swapped", "kind"}]
    vqa_{split}.json, answer_list.json    [{"question_id", "image", "question", "answer": [...]}]
    nlvr_{split}.json                     [{"images": [left, right], "sentence", "label": "True"|"False"}]
    ve_{split}.json                       [{"image", "sentence", "label"}]
    tokenizer/                            BERT WordPiece tokenizer folder
    synthetic.json                        {"format_version", "config", "counts", "vocab_size"}  (written last)
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlkit.core import progress
from vlkit.data.synthetic.captions import Caption, captions_for, hard_negatives, swap_probes
from vlkit.data.synthetic.config import FORMAT_VERSION, SynthConfig
from vlkit.data.synthetic.files import write_bytes, write_json
from vlkit.data.synthetic.pairs import nlvr_records, ve_records
from vlkit.data.synthetic.render import png_bytes
from vlkit.data.synthetic.scene import SPLIT_CODES, Scene, sample_split
from vlkit.data.synthetic.tokenizer import train_tokenizer
from vlkit.data.synthetic.vqa import vqa_records

SPLITS: tuple[str, ...] = ("train", "val", "test")
METADATA = "synthetic.json"
_CHUNK = 256


@dataclass
class SynthSummary:
    """What :func:`generate` produced: the folder, item counts per file, wall time and vocabulary size."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    vocab_size: int = 0


def _render_chunk(out_dir: str, scenes: list[Scene], done: Callable[[int], object] | None = None) -> int:
    for folder in {(Path(out_dir) / s.image).parent for s in scenes}:
        folder.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        write_bytes(Path(out_dir) / scene.image, png_bytes(scene), mkdir=False)
        if done is not None:
            done(1)
    return len(scenes)


def render_images(out_dir: Path, scenes: list[Scene], workers: int) -> None:
    """Render and write every image; ``workers > 1`` renders chunks in parallel (forked processes on
    Linux, threads elsewhere). Each image depends on its scene alone, so the bytes are the same."""
    chunks = [scenes[k:k + _CHUNK] for k in range(0, len(scenes), _CHUNK)]
    with progress.bar(len(scenes), "rendering images", unit="image") as bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                _render_chunk(str(out_dir), chunk, bar.update)
            return
        pool: Executor
        if sys.platform == "linux":  # fork: no re-import of the caller's main module; children only use PIL/numpy
            pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=multiprocessing.get_context("fork"))
        else:  # PIL releases the GIL only in parts of the work, but threads are safe everywhere
            pool = ThreadPoolExecutor(min(workers, len(chunks)))
        with pool:
            for finished in as_completed([pool.submit(_render_chunk, str(out_dir), chunk) for chunk in chunks]):
                bar.update(finished.result())


def clear_outputs(out_dir: Path) -> None:
    """Remove what a previous generation wrote (metadata first, so the folder reads as incomplete)."""
    (out_dir / METADATA).unlink(missing_ok=True)
    for name in ("images", "tokenizer"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for split in SPLITS:
        for pattern in ("{}.json", "scenes_{}.json", "{}_swaps.json", "vqa_{}.json", "nlvr_{}.json", "ve_{}.json"):
            (out_dir / pattern.format(split)).unlink(missing_ok=True)
    (out_dir / "answer_list.json").unlink(missing_ok=True)


def read_scenes(out_dir: str | Path, split: str) -> list[Scene]:
    """The scenes of a split, read back from ``scenes_{split}.json``."""
    with open(Path(out_dir) / f"scenes_{split}.json", encoding="utf-8") as f:
        return [Scene.from_dict(d) for d in json.load(f)]


def caption_phrases(caption: Caption, scene: Scene) -> list[dict[str, list[int]]]:
    """Flickr30k-Entities-style grounding of one caption: per noun phrase its character ``span``
    ``[start, end)`` in the caption and its object's ``box`` ``[left, top, right, bottom]`` in pixels."""
    return [{"span": list(span), "box": [round(v) for v in scene.objects[k].box()]}
            for span, k in zip(caption.phrase_spans(), caption.objects, strict=True)]


def _split_files(out: Path, split: str, scenes: list[Scene], cfg: SynthConfig, counts: dict[str, int],
                 done: Callable[[int], object] = lambda n: None) -> list[str]:
    """Write one split's annotation files (``done(1)`` after each scene's captions); returns its text (for
    the tokenizer)."""
    texts: list[str] = []
    records: list[dict[str, Any]] = []
    swaps: list[dict[str, Any]] = []
    for scene in scenes:
        done(1)
        caps = captions_for(scene, cfg.captions_per_image)
        group = scene.twin_of if scene.twin_of is not None else scene.image_id  # twins share their original's
        records.append({"image": scene.image, "caption": [c.text for c in caps], "image_id": scene.image_id,
                        "group": group, "phrases": [caption_phrases(c, scene) for c in caps],
                        "hard_negatives": [hard_negatives(c, scene) for c in caps]})
        texts.extend(c.text for c in caps)
        if split != "train" and len(scene.objects) >= 2:
            for caption, swapped, kind in swap_probes(scene, caps, cfg.swaps_per_image):
                swaps.append({"image": scene.image, "image_id": scene.image_id, "caption": caption,
                              "swapped": swapped, "kind": kind})
    files: dict[str, list[Any]] = {f"{split}.json": records, f"scenes_{split}.json": [s.to_dict() for s in scenes]}
    if split != "train":
        files[f"{split}_swaps.json"] = swaps
    code = SPLIT_CODES[split]
    vqa = vqa_records(scenes, np.random.default_rng([cfg.seed, code, 31]), per_image=cfg.vqa_per_image,
                      annotators=cfg.vqa_annotators, noise=cfg.vqa_noise)
    nlvr = nlvr_records(scenes, np.random.default_rng([cfg.seed, code, 37]), round(cfg.nlvr_per_image * len(scenes)))
    ve = ve_records(scenes, np.random.default_rng([cfg.seed, code, 41]), cfg.ve_per_image)
    files.update({f"vqa_{split}.json": vqa, f"nlvr_{split}.json": nlvr, f"ve_{split}.json": ve})
    if split == "train":
        files["answer_list.json"] = sorted({a for r in vqa for a in r["answer"]})
    for name, data in files.items():
        write_json(out / name, data)
        counts[name] = len(data)
    counts[f"images/{split}"] = len(scenes)
    counts[f"captions/{split}"] = sum(len(r["caption"]) for r in records)
    counts[f"twins/{split}"] = sum(s.twin_of is not None for s in scenes)
    texts += [r["question"] for r in vqa] + [a for r in vqa for a in r["answer"]]
    texts += [r["sentence"] for r in nlvr] + [r["sentence"] for r in ve]
    return texts


def generate(out_dir: str | Path, cfg: SynthConfig, *, workers: int = 1) -> SynthSummary:
    """(Re)generate the dataset for ``cfg`` in ``out_dir``; ``synthetic.json`` is written last. Progress
    bars show the rendering, the annotation files and the tokenizer's vocabulary (:mod:`vlkit.core.progress`)."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_outputs(out)
    sizes = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
    scenes: dict[str, list[Scene]] = {}
    first_id = 0
    for split in SPLITS:
        scenes[split] = sample_split(split, sizes[split], first_id, seed=cfg.seed, image_size=cfg.image_size,
                                     min_objects=cfg.min_objects, max_objects=cfg.max_objects,
                                     twin_fraction=cfg.twin_fraction)
        first_id += sizes[split]
    render_images(out, [s for split in SPLITS for s in scenes[split]], workers)
    counts: dict[str, int] = {}
    train_text: list[str] = []
    with progress.bar(sum(sizes.values()), "writing annotations", unit="image") as bar:
        for split in SPLITS:
            texts = _split_files(out, split, scenes[split], cfg, counts, bar.update)
            if split == "train":
                train_text = texts
    vocab_size = train_tokenizer(train_text, out / "tokenizer", cfg.vocab_size)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(),
                            "counts": dict(sorted(counts.items())), "vocab_size": vocab_size}
    write_json(out / METADATA, meta)
    return SynthSummary(out, meta["counts"], time.perf_counter() - start, vocab_size)
