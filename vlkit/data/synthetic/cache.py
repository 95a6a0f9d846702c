"""Reusing generated data: :func:`ensure` generates a config's folder once, then finds it again.

The folder for a config is ``root/shapes-<digest>``. It is complete when its ``synthetic.json`` (written
last) records the same format version and config. Generation happens in a temporary sibling folder that
is renamed into place, under a file lock where the platform has one, so concurrent callers neither
duplicate the work nor see a half-written folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vlkit.data.synthetic.config import FORMAT_VERSION, SynthConfig
from vlkit.data.synthetic.writer import METADATA, generate


def dataset_dir(root: str | Path, cfg: SynthConfig) -> Path:
    """Where :func:`ensure` keeps the data of ``cfg`` under ``root``."""
    return Path(root) / f"shapes-{cfg.digest()}"


def is_complete(folder: Path, cfg: SynthConfig) -> bool:
    """Whether ``folder`` holds finished data generated from ``cfg``."""
    try:
        with open(folder / METADATA, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    return meta.get("format_version") == FORMAT_VERSION and meta.get("config") == cfg.to_dict()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install(tmp: Path, target: Path, cfg: SynthConfig) -> None:
    """Rename the finished ``tmp`` to ``target``, moving a stale or incomplete ``target`` aside first."""
    if target.exists():
        if is_complete(target, cfg):
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, trash / "data")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not is_complete(target, cfg):  # lost a race to a complete folder: fine; anything else: raise
            raise


def ensure(root: str | Path, cfg: SynthConfig, *, workers: int = 1) -> Path:
    """The folder of ``cfg``'s data under ``root``, generated only if missing, incomplete or made from a
    different config."""
    root = Path(root)
    target = dataset_dir(root, cfg)
    if is_complete(target, cfg):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{target.name}.lock"):
        if is_complete(target, cfg):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            generate(tmp, cfg, workers=workers)
            _install(tmp, target, cfg)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
