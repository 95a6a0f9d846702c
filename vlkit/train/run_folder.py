"""The run folder is one run's: a lock for its lifetime, no silent overwrite, no orphaned temporary files.

- :func:`locked`: an exclusive ``fcntl.flock`` on ``DIR/.vlkit.lock`` for as long as a command writes
  into ``DIR`` (training, evaluation); a second command on the same folder fails at once with a
  :class:`RunFolderBusy` naming the holder (pid, host, command). Under ``torchrun`` rank 0 takes it and
  every rank learns the outcome, so all stop together. The lock file stays (deleting it would let two
  processes lock two different files of the same name); the kernel releases the lock when the process
  ends, however it ends.
- :func:`claim_for_training`: a fresh run refuses a folder that holds a run (checkpoints, weights,
  metrics, recipe) unless told to ``resume`` it or to ``overwrite`` it (then the old run's files go);
  orphaned ``*.tmp`` files of crashed writes are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from vlkit import dist
from vlkit.core.errors import UserError
from vlkit.weights import checkpoints as ckpt

log = logging.getLogger("vlkit.train")

LOCK_FILE = ".vlkit.lock"
RUN_FILES = ("metrics.json", "model.safetensors", "recipe.yaml", "report.md", "curves.png", "weights_report.json",
             "bad_samples.jsonl")
RUN_FOLDERS = ("checkpoints", "tb")
"""What a training run writes into its folder (``vlkit train``); another run must not mix with it."""


class RunFolderBusy(UserError):
    """Another vlkit command holds the folder (its lock)."""


class RunFolderTaken(UserError):
    """The folder holds results that the command would replace, and the user did not say to."""


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another process (it has not written its name yet)"
    return (f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, since "
            f"{info.get('since')})")


@contextlib.contextmanager
def _flock(folder: Path, what: str) -> Iterator[str | None]:
    """This process's lock on ``folder``: yields None when taken, else why not (the holder)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield f"{folder} is in use by {_holder(handle)}; wait for it to finish or choose another folder"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                                 "argv": " ".join(sys.argv), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()  # a stale holder is never named
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


@contextlib.contextmanager
def locked(folder: str | Path, what: str) -> Iterator[None]:
    """Hold ``folder`` exclusively for the block (rank 0 takes the lock; every rank raises if it could not).

    Raises:
        RunFolderBusy: another process holds it (its pid, host and command named).
    """
    folder = Path(folder)
    with _flock(folder, what) if dist.is_main() else contextlib.nullcontext() as problem:
        problem = dist.broadcast_object(problem) if dist.is_distributed() else problem
        if problem is not None:
            raise RunFolderBusy(problem)
        yield


def agreed(check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 (it may touch the folder); every rank raises the user error it raised."""
    problem: UserError | None = None
    if dist.is_main():
        try:
            check()
        except UserError as err:
            problem = err
    if dist.is_distributed():
        problem = dist.broadcast_object(problem)
    if problem is not None:
        raise problem


def run_contents(folder: Path) -> list[str]:
    """The training-run files and folders present in ``folder`` (``checkpoints/`` when it holds a complete
    checkpoint, ``tb/`` when not empty)."""
    found = [name for name in RUN_FILES if (folder / name).is_file()]
    if ckpt.list_checkpoints(folder / "checkpoints"):
        found.append("checkpoints/")
    if (folder / "tb").is_dir() and any((folder / "tb").iterdir()):
        found.append("tb/")
    return found


def check_claim(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """What :func:`claim_for_training` refuses, checked without changing anything (``vlkit train`` calls
    it before any heavy work).

    Raises:
        RunFolderTaken: the folder holds a run and neither flag was given, or both were.
    """
    if resume and overwrite:
        raise RunFolderTaken("give one of --resume (continue the run) and --overwrite (replace it), not both")
    found = run_contents(folder)
    if found and not resume and not overwrite:
        raise RunFolderTaken(f"{folder} already holds a run ({', '.join(found)}); pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --out")


def claim_for_training(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``folder`` ready for a training run (rank 0; call it holding the lock).

    A fresh run (neither ``resume`` nor ``overwrite``) refuses a folder holding a run; ``overwrite``
    deletes that run's files first; ``resume`` keeps them. Orphaned temporary files are removed.

    Raises:
        RunFolderTaken: the folder holds a run and neither flag was given, or both were.
    """
    check_claim(folder, resume=resume, overwrite=overwrite)
    _remove_orphans(folder)
    found = run_contents(folder)
    if found and overwrite:
        log.warning("--overwrite: deleting the run in %s (%s)", folder, ", ".join(found))
        for name in found:
            path = folder / name.rstrip("/")
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def claim_for_evaluation(folder: Path, *, overwrite: bool) -> None:
    """Make ``folder`` ready for an evaluation's ``metrics.json`` and ``recipe.yaml`` (rank 0; holding the
    lock): refused when they exist (a training run's, or an earlier evaluation's) unless ``overwrite``.

    Raises:
        RunFolderTaken: the files exist and ``overwrite`` is off.
    """
    found = [name for name in ("metrics.json", "recipe.yaml") if (folder / name).is_file()]
    if found and not overwrite:
        what = "a training run's" if (folder / "checkpoints").is_dir() else "an earlier evaluation's"
        raise RunFolderTaken(f"{folder} already holds {' and '.join(found)} ({what}); pass --overwrite to replace "
                             "them, or choose another --out (e.g. a new folder inside the run)")
    _remove_orphans(folder)


def _remove_orphans(folder: Path) -> None:
    removed = ckpt.remove_orphaned_temps(folder, folder / "checkpoints")
    if removed:
        log.warning("removed %d temporary file(s) a crashed write left behind: %s", len(removed),
                    ", ".join(p.name for p in removed[:5]))
