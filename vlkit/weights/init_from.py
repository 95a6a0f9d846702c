"""Initializing a model from another run's checkpoint (``init_from``): fine-tuning and stage-wise
pre-training start from pre-trained weights."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlkit.core.errors import CheckpointError, MissingCheckpointError
from vlkit.weights import checkpoints as ckpt
from vlkit.weights import release
from vlkit.weights.files import weights_file_problem

log = logging.getLogger("vlkit.train")


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file (a training checkpoint ``.pt`` or a vlkit ``.safetensors``); for a
    run folder (or its ``checkpoints/``), the newest training checkpoint, else the folder's
    ``model.safetensors`` (a released model is that file alone)."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir() and (found := ckpt.latest_checkpoint(folder)) is not None:
            return found
    if (path / release.FILE_NAME).is_file():
        return path / release.FILE_NAME
    what = "nothing" if not path.exists() else "a folder without checkpoints/ or " + release.FILE_NAME
    raise MissingCheckpointError(f"no checkpoint at {path} ({what} there; expected a .pt or .safetensors file, or a "
                                 f"run folder with checkpoints/ or {release.FILE_NAME})")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint or a vlkit weights file, as a dict with at least ``model``, ``step``
    and ``recipe`` (both formats load without unpickling code); a :class:`CheckpointError` naming the file
    when its header shows it unreadable."""
    if (problem := weights_file_problem(path)) is not None:
        raise CheckpointError(problem)
    if path.suffix == ".safetensors":
        return release.load_weights(path)
    return ckpt.load(path)


@dataclass
class InitReport:
    """What :func:`load_matching` did.

    Attributes:
        loaded: model weights taken from the checkpoint.
        new: model weights the checkpoint lacks (they keep their initialization, e.g. a new task head).
        reshaped: weights present in both with different shapes (kept as initialized), with both shapes.
        unused: checkpoint weights the model has no place for (e.g. the MLM head when fine-tuning).
    """

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Counts and names (for ``DIR/weights_report.json``)."""
        counts = {"loaded": len(self.loaded), "new": len(self.new), "reshaped": len(self.reshaped),
                  "unused": len(self.unused)}
        return {"counts": counts, **asdict(self)}

    def summary(self) -> str:
        def first(names: list[str]) -> str:
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""

        return (f"{len(self.loaded)} weights loaded, {len(self.new)} new{first(self.new)}, "
                f"{len(self.reshaped)} of another shape kept as initialized{first(self.reshaped)}, "
                f"{len(self.unused)} unused{first(self.unused)}")


def teacher_counterpart(key: str) -> str | None:
    """The online key a momentum-teacher copy mirrors: ``teacher.copies.encoder.X`` → ``encoder.X``,
    ``teacher.copies.<objective>__<module>.X`` → ``objectives.<objective>.<module>.X``."""
    prefix = "teacher.copies."
    if not key.startswith(prefix):
        return None
    slot, _, rest = key[len(prefix):].partition(".")
    if slot == "encoder":
        return f"encoder.{rest}"
    return f"objectives.{slot.replace('__', '.')}.{rest}"


@torch.no_grad()
def load_matching(model: nn.Module, state: dict[str, torch.Tensor],
                  aliases: dict[str, str] | None = None) -> InitReport:
    """Copy every tensor of ``state`` whose name and shape match one of ``model``'s (parameters and
    buffers) into it; a model key the checkpoint lacks is looked up under ``aliases[key]``; a teacher
    copy the checkpoint lacks starts from the online weights it mirrors. Reports the rest."""
    report = InitReport()
    aliases = aliases or {}
    own = model.state_dict()
    matched, used = {}, set()
    for name, value in own.items():
        source = name if name in state else aliases.get(name)
        if source is None or source not in state:
            report.new.append(name)
        elif state[source].shape != value.shape:
            report.reshaped.append(f"{name} {tuple(state[source].shape)}→{tuple(value.shape)}")
        else:
            matched[name] = state[source]
            used.add(source)
            report.loaded.append(name if source == name else f"{name} ← {source}")
    for name in list(report.new):  # teacher copies of new modules mirror their (possibly aliased) online weights
        online = teacher_counterpart(name)
        if online in matched:
            matched[name] = matched[online]
            report.new.remove(name)
            report.loaded.append(f"{name} ← {online} (online copy)")
    report.unused = sorted(k for k in state if k not in own and k not in used)
    model.load_state_dict(matched, strict=False)
    return report


def initialize_from(model: nn.Module, source: str | Path, aliases: dict[str, str] | None = None) -> InitReport:
    """Load the matching weights of the checkpoint at ``source`` (file or run folder) into ``model``;
    ``aliases`` (model key → checkpoint key) name where keys the checkpoint lacks may come from instead
    (a pre-training model's :meth:`~vlkit.models.model.PretrainModel.init_aliases`)."""
    path = find_checkpoint(source)
    report = load_matching(model, read_checkpoint(path)["model"], aliases)
    if not report.loaded:
        raise CheckpointError(f"init_from {path}: no weight of the checkpoint fits this model ({report.summary()}); "
                              "name a checkpoint of a model with the same structure")
    log.info("init_from %s: %s", path, report.summary())
    return report
