"""Atomic file writes: write a temporary file in the same folder, then ``os.replace`` it into place."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes, *, mkdir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (readers see the old file or the whole new one);
    ``mkdir=False`` skips creating the parent folder (callers writing many files create it once)."""
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dumps(obj: Any) -> str:
    """Deterministic JSON text; a list is written one element per line (readable, diff-able)."""
    if isinstance(obj, list):
        if not obj:
            return "[]\n"
        return "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in obj) + "\n]\n"
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_bytes(path, dumps(obj).encode("utf-8"))
