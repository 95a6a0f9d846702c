"""The account of one tower initialization: which weights came from the checkpoint, which are new,
which checkpoint weights found no place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _first(names: list[str], n: int = 3) -> str:
    return f" ({', '.join(names[:n])}{', ...' if len(names) > n else ''})" if names else ""


@dataclass
class LoadReport:
    """What one ``init`` key did.

    Attributes:
        tower: the recipe key that asked for it, e.g. ``encoder.image.init``.
        source: the value of that key (``timm:deit_base_patch16_224``, a path, a hub repository).
        resolved: where the weights were read from (file, folder or timm model).
        loaded: module keys (relative to the tower) that took a checkpoint weight, each mapped to the
            checkpoint key it came from.
        new: module keys the checkpoint has nothing for (they keep their initialization, e.g.
            cross-attention of ALBEF's fusion layers).
        unused: checkpoint keys with no place in the tower (e.g. a classifier ``head``).
        held: checkpoint keys kept for a head that an objective builds later over this encoder (BERT's
            MLM head: taken by the ``mlm`` objective), mapped to the head's key.
        notes: what was changed on the way (position embeddings resized, key biases dropped, ...).
    """

    tower: str
    source: str
    resolved: str = ""
    loaded: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph: counts, the first few names of each group, then the notes."""
        head = f"{self.tower} ← {self.source}"
        if self.resolved and self.resolved != self.source:
            head += f" ({self.resolved})"
        parts = [f"{len(self.loaded)} loaded", f"{len(self.new)} new{_first(self.new)}",
                 f"{len(self.unused)} unused{_first(self.unused)}"]
        if self.held:
            parts.append(f"{len(self.held)} held for heads{_first(list(self.held.values()))}")
        lines = [f"{head}: {', '.join(parts)}", *(f"  - {note}" for note in self.notes)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a JSON / YAML file in the run directory), with the counts up front."""
        counts = {"loaded": len(self.loaded), "new": len(self.new), "unused": len(self.unused), "held": len(self.held)}
        return {"counts": counts, **asdict(self)}
