"""Every skipped sample, named once with its reason, in ``bad_samples.jsonl``.

Bad data costs a sample, never the run: a malformed annotation entry, an unreadable or oversized image,
a caption that is not valid Unicode, a damaged tar shard are skipped and counted as before, and each is
also written as one JSON line to a file in the run folder (training) or the output folder
(``vlkit data pack`` / ``vlkit data filter``)::

    {"phase": "image", "source": "data/train.json", "index": 17, "key": null,
     "image": "data/images/17.jpg", "reason": "missing"}

Fields: ``phase`` (``annotations``: an entry or text line unusable when the annotations are read;
``image``: an image that cannot be used when the sample is loaded; ``caption``: a sample's text;
``shard``: damage to a tar shard as a whole), ``source`` (the annotation file, text file, shard or image
file), ``index`` (the entry's position in its file, or the line number), ``key`` (the tar sample key),
``image`` (the image path, where there is one), ``reason``. A ``shard`` line also has ``lost``: samples
of that shard known lost to the damage beyond those named on their own lines (null: the count cannot be
known, e.g. no expected sample count for the shard).

A sample is named the first time it is skipped (epochs repeat it; a resumed run appends to the same
file): loader workers run in separate processes, so each line is appended with one ``os.write`` on a
descriptor opened with ``O_APPEND`` (lines are kept well under ``PIPE_BUF``), under an exclusive
``flock``, after reading the lines other processes appended since — so no sample is named twice and no
line is torn. Counts per epoch stay where they were (``Batch.skipped``, the sources' counters).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("vlkit.data")

FILE_NAME = "bad_samples.jsonl"
PHASES: tuple[str, ...] = ("annotations", "image", "caption", "shard")
MAX_LINE_BYTES = 2048  # well under PIPE_BUF (4096 on Linux): one write is one line
MAX_ANNOUNCED = 5  # skipped samples named in the log, per process (the file names all of them)
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class BadSample:
    """One skipped sample (or, for phase ``shard``, the damage to a shard); see the module docstring."""

    phase: str
    source: str
    reason: str
    index: int | None = None
    key: str | None = None
    image: str | None = None
    lost: int | None = None

    def identity(self) -> int:
        """A 63-bit id of the sample: its ``source``, ``index`` and ``key`` (its reason and phase aside)."""
        return _identity(self.source, self.index, self.key)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "source": self.source, "index": self.index, "key": self.key,
                               "image": self.image, "reason": self.reason}
        if self.phase == "shard":
            out["lost"] = self.lost
        return out

    def line(self) -> bytes:
        """The JSON line (ASCII; long strings shortened so the line stays under :data:`MAX_LINE_BYTES`)."""
        record = self.record()
        while True:
            data = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
            if len(data) <= MAX_LINE_BYTES:
                return data
            longest = max((k for k, v in record.items() if isinstance(v, str)), key=lambda k: len(record[k]))
            value = record[longest]
            record[longest] = value[: max(len(value) // 2, 8)] + "…"

    def describe(self) -> str:
        """The sample in a few words, for the log."""
        where = self.source
        if self.index is not None:
            where += f" entry {self.index}"
        if self.key is not None:
            where += f" sample {self.key}"
        if self.image is not None and self.image != self.source:
            where += f" (image {self.image})"
        return where


def _identity(source: Any, index: Any, key: Any) -> int:
    text = json.dumps([source, index, key], ensure_ascii=True)
    return int.from_bytes(hashlib.blake2b(text.encode("ascii"), digest_size=8).digest(), "big") >> 1


class BadSampleLog:
    """Names skipped samples in ``path`` (one JSON line each, once per sample; see the module docstring)
    and in the log (the first few per process); ``path`` None: the log only.

    Attributes:
        path: the ``bad_samples.jsonl`` file, or None.
        counts: per phase, samples skipped in this process (every occurrence, epochs repeat them).
        named: samples this process named first (lines it wrote).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.counts: Counter[str] = Counter()
        self.lost = 0
        self.named = 0
        self._announced = 0
        self._seen: set[int] = set()
        self._offset = 0  # bytes of the file already read into _seen
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def where(self) -> str:
        """`` (every skipped sample is named in PATH)`` for a log line, or ``""`` without a file."""
        return f" (every skipped sample is named in {self.path})" if self.path is not None else ""

    def record(self, sample: BadSample, *, announce: bool = True) -> bool:
        """Count ``sample`` and name it (file and, for the first few, log) unless it was named before;
        True when this call named it."""
        if sample.phase not in PHASES:
            raise ValueError(f"unknown bad-sample phase `{sample.phase}`; one of {', '.join(PHASES)}")
        self.counts[sample.phase] += 1
        identity = sample.identity()
        if identity in self._seen:
            return False
        first = self._append(sample, identity)
        self._seen.add(identity)
        if not first:
            return False
        self.named += 1
        if sample.phase == "shard" and sample.lost:
            self.lost += sample.lost
        if announce:
            self._announced += 1
            if self._announced <= MAX_ANNOUNCED:
                log.warning("skipped %s: %s%s", sample.describe(), sample.reason,
                            self.where() if self._announced == 1 else "")
            elif self._announced == MAX_ANNOUNCED + 1:
                log.warning("more samples skipped; further ones are not logged here%s", self.where())
        return True

    # ------------------------------------------------------------------ the file
    def _descriptor(self) -> int:
        assert self.path is not None
        if self._pid != os.getpid() or self._fd is None:  # a forked or spawned loader worker opens its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = os.getpid()
        return self._fd

    def _append(self, sample: BadSample, identity: int) -> bool:
        """Append ``sample``'s line unless the file names it already; True when appended (always True
        without a file)."""
        if self.path is None:
            return True
        fd = self._descriptor()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            end = os.fstat(fd).st_size
            if end < self._offset:  # the file was replaced or truncated: read it again
                self._offset = 0
            if end > self._offset:
                self._offset = _read_identities(fd, self._offset, end, self._seen)
            if identity in self._seen:
                return False
            line = sample.line()
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
            self._offset = os.fstat(fd).st_size
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, -1


def _read_identities(fd: int, start: int, end: int, seen: set[int]) -> int:
    """Add the identities of the complete lines in ``[start, end)`` of ``fd`` to ``seen``; returns the
    offset after the last complete line."""
    position = start
    rest = b""
    while position < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - position), position)
        if not chunk:
            break
        position += len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            identity = _line_identity(line)
            if identity is not None:
                seen.add(identity)
        if len(rest) > MAX_LINE_BYTES * 4:  # not ours: skip to the next newline
            rest = b""
    return position - len(rest)


def _line_identity(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    return _identity(record.get("source"), record.get("index"), record.get("key"))


@dataclass
class BadSampleSummary:
    """What a ``bad_samples.jsonl`` file holds: lines per phase and the samples known lost to damaged
    shards beyond their own lines (``lost``), and the shards whose loss cannot be counted."""

    path: Path
    phases: Counter[str]
    lost: int = 0
    uncounted_shards: int = 0

    @property
    def samples(self) -> int:
        """Bad samples named or counted: every non-shard line plus the shards' known losses."""
        return sum(n for phase, n in self.phases.items() if phase != "shard") + self.lost

    def line(self) -> str:
        """One line for a person, e.g. ``3 bad samples (annotations 2, image 1) named in run/bad_samples.jsonl``."""
        parts = [f"{phase} {self.phases[phase]}" for phase in PHASES if self.phases[phase] and phase != "shard"]
        if self.phases["shard"]:
            lost = f", {self.lost} samples lost" if self.lost else ""
            unknown = f", {self.uncounted_shards} with an unknown loss" if self.uncounted_shards else ""
            parts.append(f"{self.phases['shard']} damaged shards{lost}{unknown}")
        return f"{self.samples} bad samples ({', '.join(parts) or 'none'}) named in {self.path}"


def summarize(path: str | os.PathLike[str]) -> BadSampleSummary:
    """Count the lines of a ``bad_samples.jsonl`` file (read line by line; an absent file counts none)."""
    summary = BadSampleSummary(Path(path), Counter())
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return summary
    with handle:
        while line := handle.readline(MAX_LINE_BYTES * 4):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict) or record.get("phase") not in PHASES:
                continue
            summary.phases[record["phase"]] += 1
            if record["phase"] == "shard":
                lost = record.get("lost")
                if isinstance(lost, int) and not isinstance(lost, bool):
                    summary.lost += lost
                else:
                    summary.uncounted_shards += 1
    return summary
