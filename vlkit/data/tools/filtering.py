"""Noisy web-data filtering as ALIGN (Jia et al., 2021, §3) describes it, for ALBEF-style JSON datasets.

Rules, in the order they are applied (an entry or caption is counted under the first rule that drops it):

- ``malformed``: annotation entries without an image path or a usable caption.
- ``unreadable``: images that are missing or cannot be decoded (each image is decoded once, at a
  reduced JPEG scale, so truncated files are caught here rather than in training).
- ``short_side``: images whose shorter side is below ``min_short_side`` (ALIGN: 200 px).
- ``aspect``: images whose aspect ratio (long / short side) exceeds ``max_aspect`` (ALIGN: 3).
- ``eval_duplicate``: images whose perceptual hash (DCT pHash, 64 bits, via ``imagehash``) lies within
  ``dup_distance`` bits of an evaluation image's (only when evaluation annotations are given).
- ``word_count``: captions with fewer than ``min_words`` or more than ``max_words`` words (ALIGN: 3–20).
- ``shared_text``: captions attached to more than ``max_images_per_text`` distinct images over the whole
  input (ALIGN: 10; boilerplate such as "stock photo"), compared case- and whitespace-insensitively.

Image rules drop the entry; caption rules drop single captions, and an entry whose last caption goes
is dropped under that rule. Kept entries are written unchanged except for their ``caption`` field.

The report keeps a few examples per rule; ``bad_samples.jsonl`` in the output folder names every dropped
entry and caption with its rule and reason (:mod:`vlkit.data.bad_samples`; ``index`` is the entry's
position in its input file; a dropped caption's line has ``key`` ``"caption <n>"``, its position in the
entry's caption list). Images are read with the limits
of :mod:`vlkit.data.safe_io` (a FIFO or device is never opened, a file above ``max_image_bytes`` is not
read, more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` is refused), each refusal an ``unreadable`` image
with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlkit.data.bad_samples import FILE_NAME, BadSample, BadSampleLog
from vlkit.data.json_dataset import entry_problem, read_annotation_list
from vlkit.data.safe_io import MAX_IMAGE_BYTES, Unusable, open_image

log = logging.getLogger("vlkit.data")

RULES: tuple[str, ...] = ("malformed", "unreadable", "short_side", "aspect", "eval_duplicate", "word_count",
                          "shared_text")
MAX_EXAMPLES = 5  # examples kept per rule in the report
HASH_DECODE_SIDE = 64  # JPEGs are decoded at the smallest DCT scale keeping both sides ≥ this


@dataclass(frozen=True)
class FilterRules:
    """Thresholds of :func:`filter_json_dataset` (defaults: ALIGN's).

    Attributes:
        min_short_side: drop images whose shorter side is below this many pixels.
        max_aspect: drop images whose long / short side ratio exceeds this.
        max_images_per_text: drop captions attached to more than this many distinct images.
        min_words: drop captions with fewer words (whitespace tokens with a letter or digit).
        max_words: drop captions with more words.
        dup_distance: pHash Hamming distance (of 64 bits) at or below which an image counts as a
            near-duplicate of an evaluation image.
    """

    min_short_side: int = 200
    max_aspect: float = 3.0
    max_images_per_text: int = 10
    min_words: int = 3
    max_words: int = 20
    dup_distance: int = 4

    def __post_init__(self) -> None:
        if self.min_short_side < 0 or self.max_images_per_text < 1 or self.min_words < 0:
            raise ValueError("min_short_side and min_words must be ≥ 0 and max_images_per_text ≥ 1")
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect must be ≥ 1, got {self.max_aspect}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        if not 0 <= self.dup_distance <= 16:
            raise ValueError(f"dup_distance must be in [0, 16] bits, got {self.dup_distance}")


@dataclass
class RuleCount:
    """What one rule removed: whole entries, captions (including those of removed entries), examples."""

    entries: int = 0
    captions: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, entries: int, captions: int, example: str) -> None:
        self.entries += entries
        self.captions += captions
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)


@dataclass
class FilterReport:
    """Counts in and out, per rule (in :data:`RULES` order) and per file."""

    rules: dict[str, Any]
    entries_in: int = 0
    captions_in: int = 0
    entries_out: int = 0
    captions_out: int = 0
    removed: dict[str, RuleCount] = field(default_factory=lambda: {rule: RuleCount() for rule in RULES})
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A plain-text table: one line per rule."""
        lines = [f"{'rule':<16}{'entries':>10}{'captions':>10}"]
        lines += [f"{rule:<16}{c.entries:>10}{c.captions:>10}" for rule, c in self.removed.items()]
        lines.append(f"{'kept':<16}{self.entries_out:>10}{self.captions_out:>10}   "
                     f"(of {self.entries_in} entries, {self.captions_in} captions)")
        return "\n".join(lines)


def word_count(text: str) -> int:
    """Words of a caption: whitespace-separated tokens that contain a letter or digit."""
    return sum(any(ch.isalnum() for ch in token) for token in text.split())


def text_key(text: str) -> str:
    """The form in which captions are compared for ``shared_text``: lower case, single spaces."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class ImageInfo:
    """Size and 64-bit DCT perceptual hash of a decodable image."""

    width: int
    height: int
    phash: int


def inspect_image(path: Path, max_image_bytes: int = MAX_IMAGE_BYTES) -> ImageInfo | None:
    """Size and pHash of the image at ``path`` (JPEGs decoded at a reduced scale), or None when it cannot
    be used (:func:`image_info` says why)."""
    info = image_info(path, max_image_bytes)
    return info if isinstance(info, ImageInfo) else None


def image_info(path: Path, max_image_bytes: int = MAX_IMAGE_BYTES) -> ImageInfo | str:
    """Size and pHash of the image at ``path``, or why it cannot be used (missing, not a regular file,
    beyond the byte or pixel limits, undecodable)."""
    import imagehash

    try:
        with open_image(path, max_image_bytes) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft("L", (HASH_DECODE_SIDE, HASH_DECODE_SIDE))
            gray = img.convert("L")  # decodes: a truncated file fails here
        return ImageInfo(width, height, int(str(imagehash.phash(gray)), 16))
    except Unusable as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        return f"cannot decode: {type(err).__name__}: {err}"


class NearDuplicateIndex:
    """Finds stored 64-bit hashes within ``max_distance`` bits of a query, by multi-index hashing:
    the bits are cut into ``max_distance + 1`` chunks, and two hashes that differ in at most
    ``max_distance`` bits agree exactly on at least one chunk (pigeonhole), so only hashes sharing a
    chunk value with the query are compared."""

    def __init__(self, hashes: Sequence[int], max_distance: int) -> None:
        self.hashes = list(hashes)
        self.max_distance = max_distance
        chunks = max_distance + 1
        edges = [round(i * 64 / chunks) for i in range(chunks + 1)]
        self.spans = [(lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        self.tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self.spans]
        for i, h in enumerate(self.hashes):
            for table, (lo, width) in zip(self.tables, self.spans, strict=True):
                table[(h >> lo) & ((1 << width) - 1)].append(i)

    def nearest(self, query: int) -> tuple[int, int] | None:
        """``(index, distance)`` of the closest stored hash within ``max_distance`` bits, or None."""
        best: tuple[int, int] | None = None
        seen: set[int] = set()
        for table, (lo, width) in zip(self.tables, self.spans, strict=True):
            for i in table.get((query >> lo) & ((1 << width) - 1), ()):
                if i in seen:
                    continue
                seen.add(i)
                distance = (query ^ self.hashes[i]).bit_count()
                if distance <= self.max_distance and (best is None or distance < best[1]):
                    best = (i, distance)
        return best


def _inspect_all(paths: Iterable[Path], workers: int) -> dict[Path, ImageInfo | str]:
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes without the GIL
        return dict(zip(unique, pool.map(image_info, unique), strict=True))


def _read_list(path: Path) -> list[Any]:
    return read_annotation_list(path, "{image, caption}")


def _captions(item: dict[str, Any]) -> list[str]:
    return [item["caption"]] if isinstance(item["caption"], str) else list(item["caption"])


def eval_hashes(annotation_files: Sequence[Path], image_root: Path, workers: int = 8) -> list[tuple[int, str]]:
    """``(pHash, image path)`` of every readable image the evaluation annotations name (each once)."""
    paths = [image_root / item["image"] for f in annotation_files for item in _read_list(f)
             if isinstance(item, dict) and isinstance(item.get("image"), str)]
    return [(info.phash, str(p)) for p, info in _inspect_all(paths, workers).items() if isinstance(info, ImageInfo)]


def _output_names(files: Sequence[Path]) -> list[str]:
    """Output file names: the input names, prefixed with their position where two would collide."""
    names = [f.name for f in files]
    if len(set(names)) == len(names):
        return names
    return [f"{i:02d}-{name}" for i, name in enumerate(names)]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def filter_json_dataset(annotation_files: Sequence[Path], image_root: Path, out_dir: Path,
                        rules: FilterRules = FilterRules(), *, eval_files: Sequence[Path] = (),
                        eval_image_root: Path | None = None, workers: int = 8) -> FilterReport:
    """Apply the module's rules to ALBEF-style ``annotation_files`` and write the kept entries.

    Args:
        annotation_files: ``[{"image": path, "caption": str | [str], ...}]`` lists.
        image_root: folder their ``image`` paths are relative to.
        out_dir: gets one filtered list per input file (same name; same ``image`` paths, so the same
            ``image_root`` serves them) and ``filter_report.json``, each written atomically.
        rules: the thresholds.
        eval_files: evaluation annotations whose images must not leak into training (``eval_duplicate``).
        eval_image_root: their image folder (default ``image_root``).
        workers: threads decoding images.

    Returns:
        the report (also in ``out_dir/filter_report.json``); every dropped entry and caption is named in
        ``out_dir/bad_samples.jsonl`` (written anew by each run).
    """
    files = [Path(f) for f in annotation_files]
    image_root, out_dir = Path(image_root), Path(out_dir)
    report = FilterReport(rules=dataclasses.asdict(rules))
    lists = [_read_list(f) for f in files]  # every file is readable before any work starts
    index = None
    if eval_files:
        hashed = eval_hashes([Path(f) for f in eval_files], Path(eval_image_root or image_root), workers)
        index = NearDuplicateIndex([h for h, _ in hashed], rules.dup_distance)
        eval_paths = [p for _, p in hashed]
        log.info("near-duplicate check against %d evaluation images", len(hashed))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILE_NAME).unlink(missing_ok=True)  # names this run's drops only
    bad = BadSampleLog(out_dir / FILE_NAME)

    def drop(phase: str, file: Path, index: int, item: Any, rule: str, reason: str, key: str | None = None) -> None:
        image = item.get("image") if isinstance(item, dict) else None
        bad.record(BadSample(phase, str(file), f"{rule}: {reason}", index=index, key=key,
                             image=str(image_root / image) if isinstance(image, str) else None), announce=False)

    usable = [[item if entry_problem(item) is None else None for item in items] for items in lists]
    for file, items, kept in zip(files, lists, usable, strict=True):
        for index_in_file, (item, ok) in enumerate(zip(items, kept, strict=True)):
            n = len(_captions(item)) if ok is not None else 0
            report.entries_in += 1
            report.captions_in += n
            if ok is None:
                problem = entry_problem(item) or "malformed"
                report.removed["malformed"].add(1, 0, f"entry {index_in_file}: {problem}")
                drop("annotations", file, index_in_file, item, "malformed", problem)
    infos = _inspect_all((image_root / item["image"] for kept in usable for item in kept if item is not None), workers)

    images_of_text: dict[str, set[str]] = defaultdict(set)  # over the whole (well-formed) input
    for kept in usable:
        for item in kept:
            if item is not None:
                for caption in _captions(item):
                    images_of_text[text_key(caption)].add(item["image"])

    def image_rule(path: Path) -> tuple[str, str] | None:
        info = infos[path]
        if isinstance(info, str):
            return "unreadable", f"{path} ({info})"
        short, long = min(info.width, info.height), max(info.width, info.height)
        if short < rules.min_short_side:
            return "short_side", f"{path} ({info.width}×{info.height})"
        if long > rules.max_aspect * short:
            return "aspect", f"{path} ({info.width}×{info.height})"
        if index is not None and (hit := index.nearest(info.phash)) is not None:
            return "eval_duplicate", f"{path} ~ {eval_paths[hit[0]]} ({hit[1]} bits)"
        return None

    def caption_rule(caption: str) -> str | None:
        if not rules.min_words <= word_count(caption) <= rules.max_words:
            return "word_count"
        if len(images_of_text[text_key(caption)]) > rules.max_images_per_text:
            return "shared_text"
        return None

    for file, kept, name in zip(files, usable, _output_names(files), strict=True):
        written: list[dict[str, Any]] = []
        for index_in_file, item in enumerate(kept):
            if item is None:
                continue
            captions = _captions(item)
            dropped = image_rule(image_root / item["image"])
            if dropped is not None:
                report.removed[dropped[0]].add(1, len(captions), dropped[1])
                drop("image", file, index_in_file, item, dropped[0], dropped[1])
                continue
            survivors, last_rule = [], ""
            for number, caption in enumerate(captions):
                rule = caption_rule(caption)
                if rule is None:
                    survivors.append(caption)
                else:
                    report.removed[rule].add(0, 1, f"{item['image']}: {caption!r}")
                    drop("caption", file, index_in_file, item, rule, f"caption {caption!r}", key=f"caption {number}")
                    last_rule = rule
            if not survivors:
                report.removed[last_rule].entries += 1
                continue
            caption_field: str | list[str] = survivors[0] if isinstance(item["caption"], str) else survivors
            written.append({**item, "caption": caption_field})
            report.entries_out += 1
            report.captions_out += len(survivors)
        _write_atomic(out_dir / name, json.dumps(written, ensure_ascii=False) + "\n")
        report.files.append({"input": str(file), "output": str(out_dir / name), "entries_in": len(kept),
                             "entries_out": len(written)})
    _write_atomic(out_dir / "filter_report.json", json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    bad.close()
    if bad.named:
        log.info("every dropped entry and caption is named with its rule in %s", out_dir / FILE_NAME)
    return report
