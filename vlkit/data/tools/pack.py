"""Pack ALBEF-style JSON pairs into webdataset tar shards (read by the ``webdataset`` dataset source).

Each annotated image becomes two tar members: ``{key}.jpg`` (the JPEG bytes untouched when the file
is a JPEG that needs no resizing, else re-encoded as RGB JPEG) and ``{key}.json`` =
``{"caption": [str, ...], "image_id": int, "image": path as annotated}``. Keys are 9-digit running
numbers, unique over the whole pack.

Shards are written as ``{prefix}-{i:05d}.tar.tmp`` and renamed when complete, and
``pack_report.json`` is written last: an interrupted pack leaves no half-written ``.tar`` behind
and no report. The report holds each shard's sample count (``shard_samples``), which the shard stream
reads to count the samples a damaged shard lost.

Bad data costs its entry, never the pack: malformed annotation entries and images that cannot be used
(missing, not a regular file — a FIFO or device is never opened —, more than ``max_image_bytes``, more
pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, undecodable) are skipped, counted and every one named with
its reason in ``bad_samples.jsonl`` in the output folder (:mod:`vlkit.data.bad_samples`).
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

from vlkit.core.errors import ConfigError
from vlkit.data.bad_samples import FILE_NAME, BadSample, BadSampleLog
from vlkit.data.json_dataset import Entry, read_entries
from vlkit.data.safe_io import MAX_IMAGE_BYTES, Unusable, open_image, read_bounded

log = logging.getLogger("vlkit.data")

MAX_LISTED = 20  # skipped image paths kept in the report


@dataclass
class PackReport:
    """What :func:`pack_json_dataset` wrote.

    Attributes:
        shards: the shard files, in order.
        samples: images written.
        skipped: entries left out: malformed annotations plus unusable images.
        skipped_paths: the first few unusable image paths.
        pattern: a brace pattern naming every shard (for a recipe's ``shards:``); ``""`` if none.
        shard_samples: samples per shard file name.
        bad_samples: the file naming every skipped entry with its reason (written only when one was
            skipped; ``""`` otherwise).
    """

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    pattern: str = ""
    shard_samples: dict[str, int] = field(default_factory=dict)
    bad_samples: str = ""

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
                 quality: int = 90, max_image_bytes: int = MAX_IMAGE_BYTES,
                 problems: list[str] | None = None) -> bytes | None:
    """JPEG bytes of the image at ``path`` (see the module docstring), or None when it cannot be used;
    then why (:func:`image_bytes`) is appended to ``problems`` when given."""
    try:
        return image_bytes(path, resize_short=resize_short, max_side=max_side, quality=quality,
                           max_image_bytes=max_image_bytes)
    except Unusable as err:
        if problems is not None:
            problems.append(str(err))
        return None


def image_bytes(path: Path, *, resize_short: int | None = None, max_side: int | None = None,
                quality: int = 90, max_image_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """JPEG bytes of the image at ``path`` (see the module docstring), or :class:`Unusable` with the reason:
    missing, not a regular file, more than ``max_image_bytes`` (read with a bounded read), more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``, undecodable."""
    data = read_bounded(path, max_image_bytes)
    with open_image(data, max_image_bytes) as img:
        try:
            size = scaled_size(*img.size, resize_short=resize_short, max_side=max_side)
            if img.format == "JPEG" and size == img.size:
                img.load()  # a full decode: a truncated JPEG is caught here, not in training
                return data
            if img.format == "JPEG":
                img.draft("RGB", size)  # decode at a reduced DCT scale still ≥ the target size
            rgb = img.convert("RGB")
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise Unusable(f"cannot decode: {type(err).__name__}: {err}") from None
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class _ShardSink:
    """Writes samples into numbered shards of ``shard_size`` samples, each renamed into place when full."""

    def __init__(self, out_dir: Path, prefix: str, shard_size: int) -> None:
        self.out_dir = out_dir
        self.prefix = prefix
        self.shard_size = shard_size
        self.shards: list[Path] = []
        self.counts: dict[str, int] = {}
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
        self.counts[final.name] = self.in_shard

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
                      quality: int = 90, prefix: str = "shard", max_image_bytes: int = MAX_IMAGE_BYTES) -> PackReport:
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
        max_image_bytes: the largest image file read (larger ones are skipped, not read).

    Returns:
        the report (also written to ``out_dir/pack_report.json``); every skipped entry is named in
        ``out_dir/bad_samples.jsonl`` (written anew by each pack).
    """
    if shard_size <= 0:
        raise ConfigError(f"shard_size must be positive, got {shard_size}")
    for name, value in (("max_side", max_side), ("resize_short", resize_short)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    image_root, out_dir = Path(image_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILE_NAME).unlink(missing_ok=True)  # names this pack's skipped entries only
    bad = BadSampleLog(out_dir / FILE_NAME)
    entries, malformed = read_entries([Path(f) for f in annotation_files], image_root, bad=bad)
    report = PackReport(skipped=malformed)
    sink = _ShardSink(out_dir, prefix, shard_size)
    try:
        for entry in entries:
            problems: list[str] = []
            jpeg = encode_image(entry.image, resize_short=resize_short, max_side=max_side, quality=quality,
                                max_image_bytes=max_image_bytes, problems=problems)
            if jpeg is None:
                report.skipped += 1
                reason = problems[-1] if problems else "cannot be used"
                bad.record(BadSample("image", entry.source, reason, index=entry.index, image=str(entry.image)),
                           announce=False)
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
    finally:
        bad.close()
    report.shards = sink.shards
    report.shard_samples = dict(sink.counts)
    report.pattern = shard_pattern(out_dir, prefix, len(sink.shards))
    if report.skipped:
        report.bad_samples = str(out_dir / FILE_NAME)
    (out_dir / "pack_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if report.skipped:
        log.warning("packing skipped %d entries (malformed annotations or unusable images); every one is named "
                    "with its reason in %s", report.skipped, report.bad_samples)
    return report
