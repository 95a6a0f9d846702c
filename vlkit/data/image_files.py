"""Finding image files in folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_FILE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def list_images(folders: Sequence[str | Path], extensions: Sequence[str] = IMAGE_FILE_EXTENSIONS) -> list[Path]:
    """Image files under ``folders`` (recursively; by extension, case-insensitive), sorted per folder."""
    suffixes = {f".{e.lower().lstrip('.')}" for e in extensions}
    found: list[Path] = []
    for folder in folders:
        files = [Path(d) / name for d, _, names in os.walk(folder, followlinks=True) for name in names
                 if Path(name).suffix.lower() in suffixes]
        found.extend(sorted(files))
    return found
