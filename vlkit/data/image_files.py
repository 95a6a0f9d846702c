"""Finding image files in folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_FILE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def list_images(folders: Sequence[str | Path], extensions: Sequence[str] = IMAGE_FILE_EXTENSIONS) -> list[Path]:
    """Image files under ``folders`` (recursively, following links; by extension, case-insensitive), sorted
    per folder. A folder reached twice (a symbolic link back up the tree) is walked once, so a link loop
    cannot make the walk endless. Names are listed as found: a FIFO or device named like an image is
    skipped, with its reason, when a sample reads it (never opened here)."""
    suffixes = {f".{e.lower().lstrip('.')}" for e in extensions}
    found: list[Path] = []
    for folder in folders:
        visited: set[tuple[int, int]] = set()
        files: list[Path] = []
        for d, dirs, names in os.walk(folder, followlinks=True):
            try:
                info = os.stat(d)
            except OSError:
                dirs[:] = []
                continue
            if (info.st_dev, info.st_ino) in visited:
                dirs[:] = []
                continue
            visited.add((info.st_dev, info.st_ino))
            files.extend(Path(d) / name for name in names if Path(name).suffix.lower() in suffixes)
        found.extend(sorted(files))
    return found
