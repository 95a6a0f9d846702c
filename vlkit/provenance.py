"""What produced a number: the record every result file carries (``metrics.json``, ``bench.json``,
``report.md``, an ablation's ``results.csv``).

:func:`record` collects, in one place:

- ``code``: the vlkit version and, when vlkit runs from a git checkout, the commit and whether the
  tree had uncommitted changes (``dirty``; ``null`` when not a checkout);
- ``recipe_sha256``: a hash of the resolved recipe (YAML, every default spelled out), so two figures
  with the same hash came from the same settings;
- ``libraries``: Python, torch (and its CUDA), timm, transformers;
- ``device`` (and its model name), ``world_size``, ``seed``, ``step``;
- ``eval_data`` (:func:`evaluation_data`): the evaluation data a metric was computed on — each
  annotation file with its size and SHA-256, image folders with their file count and bytes, and the
  sample and skipped counts the evaluation reported. :func:`data_key` reduces it to what must agree
  for two figures to be comparable (content, not paths).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import vlkit

if TYPE_CHECKING:
    from vlkit.data.sources import DataSource
    from vlkit.recipe import Recipe

LIBRARIES = ("torch", "timm", "transformers")
COUNTS = ("n", "n_images", "n_texts", "n_swaps", "n_skipped", "n_skipped_annotations", "box_n", "n_classes",
          "n_answers")
"""Metric keys that count the evaluated (and skipped) samples; they belong to the data fingerprint."""
HASH_LIMIT = 1 << 30
"""Files larger than this are fingerprinted by size only (their hash would take long to compute)."""


@functools.lru_cache(maxsize=1)
def code() -> dict[str, Any]:
    """vlkit's version, and its git commit and dirty flag when it runs from a checkout."""
    root = Path(vlkit.__file__).resolve().parent.parent
    out: dict[str, Any] = {"vlkit": vlkit.__version__, "git_commit": None, "dirty": None}
    if not (root / ".git").exists():
        return out
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
        if status.returncode == 0:
            out["dirty"] = bool(status.stdout.strip())
    return out


def libraries() -> dict[str, str | None]:
    """Versions of Python and the libraries the numbers depend on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def device_name(device: torch.device | str) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu (AMD EPYC ...)``."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    return f"{device} ({model})" if model else str(device)


def recipe_hash(recipe_yaml: str) -> str:
    """SHA-256 of the resolved recipe's YAML."""
    return hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> dict[str, Any]:
    """A file: its size and SHA-256 (size only above :data:`HASH_LIMIT`); a folder: the number and total
    size of the files under it; a missing path: ``missing``; an unreadable one: ``error`` (the record
    says so rather than failing the run that has just finished)."""
    try:
        return _fingerprint(Path(path))
    except OSError as err:
        return {"path": str(path), "error": f"{type(err).__name__}: {err}"}


def _fingerprint(path: Path) -> dict[str, Any]:
    if path.is_file():
        stat = path.stat()
        out: dict[str, Any] = {"path": str(path), "bytes": stat.st_size}
        if stat.st_size <= HASH_LIMIT:
            out["sha256"] = _file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        return out
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return {"path": str(path), "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return {"path": str(path), "missing": True}


def _task_files(recipe: Recipe, source: DataSource) -> list[Path]:
    """The files a task's evaluation reads: those named in the task section (the evaluated split's
    entries of ``splits``, other file paths as given, ``image_folder``) and, where the task names a
    split and no files of its own, the source's annotation files of that split."""
    task: dict[str, Any] = recipe.to_dict()["task"]
    split = task.get("eval_split") or task.get("split") or recipe.eval.split
    files: list[Path] = []
    own = task.get("splits") or {}
    if isinstance(split, str) and split in own:
        files += [Path(f) for f in own[split]]
    for key, value in task.items():
        if key in ("type", "splits") or not isinstance(value, str):
            continue
        if Path(value).is_file() or (key == "image_folder" and Path(value).is_dir()):
            files.append(Path(value))
    if not files and isinstance(split, str):
        for lookup in (lambda: source.task_files(str(task["type"]), split), lambda: source.split_files(split)):
            try:
                files = list(lookup())
                break
            except (ValueError, NotImplementedError):
                continue
    return files


def evaluation_data(recipe: Recipe, source: DataSource, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of the data ``metrics`` were computed on: the split, every file with its size and
    hash (folders: file count and bytes), and the evaluation's sample and skipped counts."""
    if recipe.task is None:
        split: str | None = recipe.eval.split
        try:
            files = list(source.split_files(recipe.eval.split))
        except ValueError:  # no such split: nothing was evaluated from it
            files = []
        swaps = source.swap_file(recipe.eval.split) if recipe.eval.swap_probe else None
        if swaps is not None:
            files.append(swaps)
    else:
        task = recipe.to_dict()["task"]
        split = task.get("eval_split") or task.get("split") or recipe.eval.split
        files = _task_files(recipe, source)
    return {"split": split, "files": [fingerprint(f) for f in files],
            "counts": {k: metrics[k] for k in COUNTS if isinstance(metrics.get(k), int | float)}}


def data_key(eval_data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What must agree for two metrics to be comparable: the files' contents (hash or size and count,
    not their paths) and the sample counts."""
    if eval_data is None:
        return None
    files = [{k: v for k, v in f.items() if k != "path"} for f in eval_data.get("files", [])]
    return {"files": files, "counts": dict(eval_data.get("counts", {}))}


def record(*, recipe_yaml: str, seed: int, step: int | None, device: torch.device | str, world_size: int,
           eval_data: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record of a result (see the module docstring); ``extra`` adds fields."""
    out: dict[str, Any] = {"code": code(), "recipe_sha256": recipe_hash(recipe_yaml), "libraries": libraries(),
                           "device": device_name(device), "world_size": world_size, "seed": seed, "step": step}
    if eval_data is not None:
        out["eval_data"] = dict(eval_data)
    out.update(extra)
    return out


def summary(prov: Mapping[str, Any]) -> str:
    """One line for a report: ``vlkit 0.1.0 @ 1a2b3c4d5e (dirty), recipe sha256 5d6e7f…, torch 2.6.0, …, cpu (…),
    1 process(es), seed 0, step 600``."""
    code_ = prov.get("code", {})
    commit = code_.get("git_commit")
    where = f" @ {commit[:10]}" + (" (dirty)" if code_.get("dirty") else "") if commit else ""
    libs = prov.get("libraries", {})
    parts = [f"vlkit {code_.get('vlkit')}{where}", f"recipe sha256 {str(prov.get('recipe_sha256'))[:12]}",
             ", ".join(f"{name} {libs.get(name)}" for name in LIBRARIES if libs.get(name)),
             str(prov.get("device")), f"{prov.get('world_size')} process(es)", f"seed {prov.get('seed')}",
             f"step {prov.get('step')}"]
    return ", ".join(p for p in parts if p)
