"""Pack ALBEF-style JSON pairs into webdataset tar shards (read by the ``webdataset`` dataset source).

Each annotated image becomes two tar members: ``{key}.jpg`` (the JPEG bytes untouched when the file
is a JPEG that needs no resizing, else re-encoded as RGB JPEG) and ``{key}.json`` =
``{"caption": [str, ...], "image_id": int, "image": path as annotated}``. Keys are 9-digit running
numbers, unique over the whole pack.

Shards are written as ``{prefix}-{i:05d}.tar.tmp`` and renamed when complete, and
``pack_report.json`` is written last: an interrupted pack leaves no half-written ``.tar`` behind
and no report.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from vlkit.data.json_dataset import Entry, read_entries

log = logging.getLogger("vlkit.data")

MAX_LISTED = 20  # skipped image paths kept in the report


@dataclass
class PackReport:
    """What :func:`pack_json_dataset` wrote.

    Attributes:
        shards: the shard files, in order.
        samples: images written.
        skipped: entries left out: malformed annotations plus missing or corrupt images.
        skipped_paths: the first few missing or corrupt image paths.
        pattern: a brace pattern naming every shard (for a recipe's ``shards:``); ``""`` if none.
    """

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    pattern: str = ""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (paths as strings)."""
        data = dataclasses.asdict(self)
        data["shards"] = [str(p) for p in self.shards]
        return data


def shard_pattern(out_dir: Path, prefix: str, count: int) -> str:
    """The brace pattern naming shards ``0..count-1`` (a plain path for a single shard)."""
    if count == 0:
        return ""
    if count == 1:
        return str(out_dir / f"{prefix}-00000.tar")
    return str(out_dir / f"{prefix}-{{00000..{count - 1:05d}}}.tar")


def scaled_size(width: int, height: int, *, resize_short: int | None = None,
                max_side: int | None = None) -> tuple[int, int]:
    """``(width, height)`` shrunk so the short side is ≤ ``resize_short`` and the long side ≤ ``max_side``
    (aspect ratio kept, never enlarged)."""
    scale = 1.0
    if resize_short is not None:
        scale = min(scale, resize_short / min(width, height))
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))


def encode_image(path: Path, *, resize_short: int | None = None, max_side: int | None = None,
                 quality: int = 90) -> bytes | None:
    """JPEG bytes of the image at ``path`` (see the module docstring), or None when it is missing or corrupt."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            size = scaled_size(*img.size, resize_short=resize_short, max_side=max_side)
            if img.format == "JPEG" and size == img.size:
                img.load()  # a full decode: a truncated JPEG is caught here, not in training
                return data
            if img.format == "JPEG":
                img.draft("RGB", size)  # decode at a reduced DCT scale still ≥ the target size
            rgb = img.convert("RGB")
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=quality)
        return out.getvalue()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


class _ShardSink:
    """Writes samples into numbered shards of ``shard_size`` samples, each renamed into place when full."""

    def __init__(self, out_dir: Path, prefix: str, shard_size: int) -> None:
        self.out_dir = out_dir
        self.prefix = prefix
        self.shard_size = shard_size
        self.shards: list[Path] = []
        self.writer: wds.TarWriter | None = None
        self.in_shard = 0

    def _tmp(self) -> Path:
        return self.out_dir / f"{self.prefix}-{len(self.shards):05d}.tar.tmp"

    def write(self, sample: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = wds.TarWriter(str(self._tmp()), encoder=False, mtime=0)  # an int: no PAX header per member
            self.in_shard = 0
        self.writer.write(sample)
        self.in_shard += 1
        if self.in_shard == self.shard_size:
            self.finish()

    def finish(self) -> None:
        """Close the open shard and rename it into place."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        final = self.out_dir / f"{self.prefix}-{len(self.shards):05d}.tar"
        os.replace(self._tmp(), final)
        self.shards.append(final)

    def abandon(self) -> None:
        """Drop the open, incomplete shard."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self._tmp().unlink(missing_ok=True)


def _record(entry: Entry, image_root: Path) -> dict[str, Any]:
    """The ``.json`` member of ``entry``: its captions, image id and image path as annotated."""
    try:
        image = entry.image.relative_to(image_root).as_posix()
    except ValueError:  # an absolute path in the annotations
        image = entry.image.as_posix()
    return {"caption": list(entry.captions), "image_id": entry.idx, "image": image}


def pack_json_dataset(annotation_files: Sequence[Path], image_root: Path, out_dir: Path, *,
                      shard_size: int = 1000, max_side: int | None = None, resize_short: int | None = None,
                      quality: int = 90, prefix: str = "shard") -> PackReport:
    """Pack the entries of ALBEF-style ``annotation_files`` into tar shards ``out_dir/{prefix}-{i:05d}.tar``.

    Args:
        annotation_files: ``[{"image": path, "caption": str | [str], "image_id"?: int}]`` files.
        image_root: folder the ``image`` paths are relative to.
        out_dir: created if missing; gets the shards and ``pack_report.json``.
        shard_size: samples per shard (the last shard may hold fewer).
        max_side: shrink so the long side is ≤ this (never enlarge); None: no limit.
        resize_short: shrink so the short side is ≤ this (never enlarge); None: no limit.
        quality: JPEG quality of re-encoded images.
        prefix: shard file name prefix.

    Returns:
        the report (also written to ``out_dir/pack_report.json``).
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    for name, value in (("max_side", max_side), ("resize_short", resize_short)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    image_root, out_dir = Path(image_root), Path(out_dir)
    entries, malformed = read_entries([Path(f) for f in annotation_files], image_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PackReport(skipped=malformed)
    sink = _ShardSink(out_dir, prefix, shard_size)
    try:
        for entry in entries:
            jpeg = encode_image(entry.image, resize_short=resize_short, max_side=max_side, quality=quality)
            if jpeg is None:
                report.skipped += 1
                if len(report.skipped_paths) < MAX_LISTED:
                    report.skipped_paths.append(str(entry.image))
                continue
            meta = json.dumps(_record(entry, image_root), ensure_ascii=False).encode("utf-8")
            sink.write({"__key__": f"{report.samples:09d}", "jpg": jpeg, "json": meta})
            report.samples += 1
        sink.finish()
    except BaseException:
        sink.abandon()
        raise
    report.shards = sink.shards
    report.pattern = shard_pattern(out_dir, prefix, len(sink.shards))
    (out_dir / "pack_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if report.skipped:
        log.warning("packing skipped %d entries (malformed annotations or unreadable images: %s)",
                    report.skipped, ", ".join(report.skipped_paths[:5]))
    return report
