"""Tar shards read member by member, with a byte limit per member and an account of any damage.

webdataset's own reader stops at the first corrupt header as if the shard had ended (``tarfile``
treats an invalid header after the first as the end of the archive), so a damaged shard silently
loses every sample after the damage; members are also read whole whatever their declared size.
:class:`TarShardReader` instead

- skips invalid header blocks and resynchronises on the next valid header (``ignore_zeros``), noting
  each corrupt byte range: the samples after the damage are read, the ones whose members fell inside
  it are incomplete (and are named as bad samples by the stream);
- notes a shard cut off inside a member or a header, or cut at a member boundary (no end-of-archive
  marker of zero blocks);
- leaves a member larger than ``max_member_bytes`` unread (its sample is incomplete, with the reason).

It groups members into samples by key the way webdataset does (``{key}.{ext}``; consecutive members
with the same key), and yields ``{"__key__", "__url__", ext: bytes, "__problems__": [str]}``.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, Any

from vlkit.data.safe_io import size_text

# tarfile's header errors (not in its __all__ nor in typeshed)
_EOF_HEADER: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_INVALID_HEADER: type[Exception] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]

_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key / extension split
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped
_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


class _WatchedTarInfo(tarfile.TarInfo):
    """Reports each header block ``tarfile`` rejects to the :class:`_ShardTar` reading it."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _WatchedTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _EOF_HEADER:
            if isinstance(tarfile_, _ShardTar):
                tarfile_.zero_block = tarfile_.offset
            raise
        except _INVALID_HEADER:
            if isinstance(tarfile_, _ShardTar):
                tarfile_.invalid(tarfile_.offset)
            raise
        except _TRUNCATED_HEADER:
            if isinstance(tarfile_, _ShardTar):
                tarfile_.truncated_at = tarfile_.offset
            raise


class _ShardTar(tarfile.TarFile):
    """A ``TarFile`` that keeps the damage :class:`_WatchedTarInfo` reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.corrupt: list[list[int]] = []  # [start, end) byte ranges of rejected header blocks
        self.zero_block: int | None = None  # offset of the last zero block (end-of-archive marker) seen
        self.truncated_at: int | None = None  # offset of a header cut off by the end of the data
        super().__init__(*args, **kwargs)

    def invalid(self, offset: int) -> None:
        if self.corrupt and self.corrupt[-1][1] == offset:
            self.corrupt[-1][1] = offset + tarfile.BLOCKSIZE
        else:
            self.corrupt.append([offset, offset + tarfile.BLOCKSIZE])


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class TarShardReader:
    """Samples of one tar shard (see the module docstring).

    Attributes:
        samples: samples (key groups) read so far, complete or not.
        damage: what is wrong with the shard, for a person (empty: nothing found).
        complete: the shard was read to its end (or to the damage that ended it); False while
            iterating or when the iteration was abandoned.
    """

    def __init__(self, url: str, fileobj: IO[bytes], max_member_bytes: int) -> None:
        self.url = url
        self.fileobj = fileobj
        self.max_member_bytes = max_member_bytes
        self.samples = 0
        self.damage: list[str] = []
        self.complete = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            tar = _ShardTar.open(fileobj=self.fileobj, mode="r|*", tarinfo=_WatchedTarInfo, ignore_zeros=True)
        except _ERRORS as err:
            self.damage.append(f"not a readable tar file: {err}")
            self.complete = True
            return
        assert isinstance(tar, _ShardTar)
        group: dict[str, Any] | None = None
        pending: str | None = None  # a note for the next sample (damage just before it)
        reported = 0  # corrupt ranges already noted
        member_end = 0  # where the last member's data ends
        started = False
        while True:
            try:  # a first member of None ended the archive already: another next() would seek back
                info = tar.next() if started or tar.firstmember is not None else None  # type: ignore[attr-defined]
                started = True
            except _ERRORS as err:
                self.damage.append(f"unreadable after the member data ending at byte {member_end}: {err}")
                if group is not None:
                    group["__problems__"].append("the shard is unreadable after it")
                break
            while reported < len(tar.corrupt) and (info is None or tar.corrupt[reported][1] <= info.offset):
                start, end = tar.corrupt[reported]
                note = f"corrupt tar data at bytes {start}-{end} ({size_text(end - start)}) skipped"
                self.damage.append(note)
                if group is not None:
                    group["__problems__"].append(f"{note} after its members")
                pending = f"{note} before its members"
                reported += 1
            if info is None:
                break
            tar.members = []  # type: ignore[attr-defined]  # no index of every member in memory
            member_end = info.offset_data + _padded(info.size)
            name = info.name
            if not info.isreg() or _META.match(name) or (name.startswith("__") and name.endswith("__")):
                continue
            match = _NAME.match(name)
            if match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if group is None or key != group["__key__"]:
                if group is not None:
                    self.samples += 1
                    yield group
                group = {"__key__": key, "__url__": self.url, "__problems__": [pending] if pending else []}
                pending = None
            if ext in group:
                group["__problems__"].append(f"duplicate member {name}")
                continue
            if info.size > self.max_member_bytes:
                group["__problems__"].append(f"member {name} holds {info.size} bytes, more than the "
                                             f"{size_text(self.max_member_bytes)} limit (not read)")
                continue
            try:
                handle = tar.extractfile(info)
                assert handle is not None  # a regular member
                group[ext] = handle.read()
            except _ERRORS as err:
                self.damage.append(f"cut off inside member {name} (at byte {info.offset}): {err}")
                group["__problems__"].append(f"member {name} cut off: {err}")
                break
        if tar.truncated_at is not None:
            self.damage.append(f"cut off inside a header at byte {tar.truncated_at}")
            if group is not None:
                group["__problems__"].append(f"the shard is cut off after it, at byte {tar.truncated_at}")
        elif not self.damage and (tar.zero_block is None or tar.zero_block < member_end):
            self.damage.append(f"no end-of-archive marker after byte {member_end}: the shard was cut off (truncated)")
        if group is not None:
            self.samples += 1
            yield group
        self.complete = True
