"""Reading files the data names, with limits: a path in an annotation list may point anywhere (a huge
file, ``/dev/zero``, a FIFO, a directory), and an image may decode to billions of pixels.

- :func:`read_bounded` reads a regular file of at most ``max_bytes`` (a FIFO, device or directory is
  refused after a ``stat``, without opening it for reading; a file larger than the cap is refused from
  its size, and one that grows past it while read is caught after ``max_bytes + 1`` bytes).
- :func:`decode_image` turns a file or encoded bytes into an RGB image, or raises :class:`Unusable`
  with the reason (missing, not a regular file, too large, more pixels than Pillow's decompression-bomb
  limit ``PIL.Image.MAX_IMAGE_PIXELS``, undecodable).

Every refusal is an :class:`Unusable` whose message is the reason, for the bad-sample log
(:mod:`vlkit.data.bad_samples`).
"""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import warnings
from typing import Any

from PIL import Image

MAX_IMAGE_BYTES = 64 << 20
"""Default cap on the bytes of one image file or tar member (64 MiB)."""

MAX_ANNOTATION_BYTES = 8 << 30
"""Default cap on one annotation (JSON) file read whole (8 GiB)."""

MAX_SIDECAR_BYTES = 16 << 20
"""Cap on small metadata files read beside the data (shard statistics, pack reports)."""

_CHUNK = 1 << 20


class Unusable(Exception):
    """A file or a piece of data that cannot be used; ``str(err)`` is the reason, for a person."""


def size_text(n: int) -> str:
    """``n`` bytes for a person: ``512 B``, ``3.0 KiB``, ``64.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def file_problem(path: str | os.PathLike[str], max_bytes: int | None = None) -> str | None:
    """Why ``path`` cannot be read as a data file (missing, not a regular file, larger than
    ``max_bytes``), or None; decided from ``stat`` alone (nothing is opened)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot stat: {err.strerror or err}"
    except ValueError as err:  # a NUL byte, or a character the file system cannot encode
        return f"not a usable path: {err}"
    if not stat.S_ISREG(info.st_mode):
        return f"{_kind(info.st_mode)}, not a regular file"
    if max_bytes is not None and info.st_size > max_bytes:
        return f"{info.st_size} bytes, more than the {size_text(max_bytes)} limit"
    return None


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` if it holds at most ``max_bytes``, else :class:`Unusable`.

    Refused without opening: a missing path, a FIFO, device, socket or directory, a file whose size is
    above the cap. The file is then opened non-blocking (a FIFO swapped in after the check does not
    block), checked again on the open descriptor, and read in chunks up to ``max_bytes + 1`` bytes: a
    file that grew past the cap (or reports a wrong size) is refused without reading the rest.
    """
    problem = file_problem(path, max_bytes)
    if problem is not None:
        raise Unusable(problem)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise Unusable(f"cannot open: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unusable(f"{_kind(info.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise Unusable(f"more than the {size_text(max_bytes)} limit (more than its size said: it grew, or is a "
                           "special file)")
        return b"".join(chunks)
    except OSError as err:
        raise Unusable(f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_json_bounded(path: str | os.PathLike[str], max_bytes: int = MAX_ANNOTATION_BYTES) -> Any:
    """A UTF-8 JSON file's content, read with :func:`read_bounded`; :class:`Unusable` with the reason
    (including a JSON or UTF-8 error) otherwise."""
    data = read_bounded(path, max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise Unusable(f"not UTF-8: {err}") from None
    except json.JSONDecodeError as err:
        raise Unusable(f"not JSON: {err}") from None


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (a lone surrogate, e.g. from a JSON ``\\ud800`` escape,
    which the tokenizer rejects), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
    return None


# PIL warns (DecompressionBombWarning) above MAX_IMAGE_PIXELS and raises above twice that, inside
# Image.open. The warning is turned into an error for the duration of the open, under a lock because
# warning filters are process-wide (threads decode in `vlkit data filter`).
_OPEN_LOCK = threading.Lock()


def _open(data: bytes) -> Image.Image:
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def pixel_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` × ``height`` is refused (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``,
    the decompression-bomb limit; None disables it), or None."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        return (f"{width}×{height} = {width * height} pixels, more than the decompression-bomb limit of "
                f"{int(limit)} (PIL.Image.MAX_IMAGE_PIXELS)")
    return None


def open_image(source: str | os.PathLike[str] | bytes, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """The image at ``source`` (a path or encoded bytes), opened lazily (header read, pixels not yet
    decoded) after the byte and pixel limits; :class:`Unusable` with the reason otherwise. Use it as a
    context manager, like ``Image.open``."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise Unusable(f"{len(source)} bytes, more than the {size_text(max_bytes)} limit")
        data = source
    else:
        data = read_bounded(source, max_bytes)
    try:
        img = _open(data)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise Unusable(f"decompression bomb: {err}") from None
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on hostile bytes
        raise Unusable(_decode_reason(err)) from None
    problem = pixel_problem(*img.size)
    if problem is not None:
        img.close()
        raise Unusable(problem)
    return img


def _decode_reason(err: Exception) -> str:
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image Pillow can identify"
    return f"cannot decode: {type(err).__name__}: {err}"


def decode_image(source: str | os.PathLike[str] | bytes, draft_size: int | None = None,
                 max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """The image at ``source`` (a path or encoded bytes) as RGB, or :class:`Unusable` with the reason.

    ``rgb.info["stored_size"]`` is the stored ``(width, height)`` (before any draft reduction).

    Args:
        draft_size: for JPEGs, decode at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay
            ≥ ``draft_size`` (``Image.draft``); None: full size.
        max_bytes: the largest file (or encoded member) accepted.
    """
    with open_image(source, max_bytes) as img:
        try:
            stored_size = img.size
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            rgb = img.convert("RGB")
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise Unusable(_decode_reason(err)) from None
    rgb.info["stored_size"] = stored_size
    return rgb
