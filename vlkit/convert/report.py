"""The accounting of a conversion: every key mapped, transformed, dropped (with the reason) or filled
(with where its value came from). Printed in a compact form (layer indices folded) and written in
full to ``conversion.json`` and ``conversion.md``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")
_DOTTED_NAME = re.compile(r"`[^`\s]*\.[^`\s]*`")


def fold(key: str) -> str:
    """``blocks.3.attn.qkv.weight`` → ``blocks.*.attn.qkv.weight``."""
    return _INDEX.sub("*", key)


def _common_prefix(keys: list[str]) -> str:
    """The longest dotted prefix shared by ``keys``, as ``prefix.*`` (the key itself when alone)."""
    if len(keys) == 1:
        return keys[0]
    parts = [k.split(".") for k in keys]
    shared = []
    for column in zip(*parts, strict=False):
        if len(set(column)) > 1:
            break
        shared.append(column[0])
    return ".".join(shared) + ".*" if shared else "*"


def _root(key: str) -> str:
    """The module a key belongs to, for grouping: ``encoder.text_encoder``, ``teacher.copies.encoder``."""
    parts = key.split(".")
    return ".".join(parts[: min(3 if parts[0] == "teacher" else 2, max(1, len(parts) - 1))])


def folded(rows: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """``(key, why)`` rows grouped by module and reason (layer indices and the key names it quotes
    folded): ``(shared key prefix, count, reason)``, in first-seen order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key, why in rows:
        groups.setdefault((_root(key), _DOTTED_NAME.sub("`…`", fold(why))), []).append(key)
    whole = {why for _, why in rows}
    return [(_common_prefix(keys), len(keys), label if label not in whole and len(keys) > 1 else
             next(w for k, w in rows if k == keys[0])) for (_, label), keys in groups.items()]


@dataclass
class Accounting:
    """Where every key went.

    Attributes:
        direction: ``official → vlkit`` or ``vlkit → official``.
        family: ``albef`` or ``vlmo``.
        layout: the official layout.
        source: the converted file.
        recipe: the recipe the vlkit side was checked against.
        mapped: ``(from, to)`` keys copied bit for bit.
        transformed: ``(from, to, how)`` keys whose values changed (resized, re-parametrized) or that
            reached the output through another key's place (an init alias).
        dropped: ``(key, reason)`` source keys not written.
        filled: ``(key, how)`` output keys the source does not hold as such.
    """

    direction: str
    family: str
    layout: str
    source: str
    recipe: str
    mapped: list[tuple[str, str]] = field(default_factory=list)
    transformed: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    filled: list[tuple[str, str]] = field(default_factory=list)

    @property
    def source_keys(self) -> int:
        """Source keys accounted for (each appears once among mapped, transformed and dropped)."""
        return len({k for k, *_ in self.mapped} | {k for k, *_ in self.transformed} | {k for k, _ in self.dropped})

    def headline(self) -> str:
        return (f"{self.direction} ({self.family}, {self.layout} layout): {len(self.mapped)} copied, "
                f"{len(self.transformed)} transformed, {len(self.dropped)} dropped, {len(self.filled)} filled")

    def summary(self) -> str:
        """The headline, then transformed, dropped and filled keys grouped by reason (see :func:`folded`)."""
        lines = [self.headline()]
        sections = [("transformed", [(f"{a} → {b}", how) for a, b, how in self.transformed]),
                    ("dropped", self.dropped), ("filled", self.filled)]
        for title, rows in sections:
            if not rows:
                continue
            lines.append(f"  {title}:")
            for pattern, count, why in folded(rows):
                times = f" (×{count})" if count > 1 else ""
                lines.append(f"    {pattern}{times}: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The full accounting as a Markdown page."""
        out = [f"# Conversion: {self.direction}", "", f"- family: {self.family}", f"- layout: {self.layout}",
               f"- source: `{self.source}`", f"- recipe: `{self.recipe}`", f"- {self.headline()}", ""]
        tables: list[tuple[str, list[str], list[tuple[str, ...]]]] = [
            ("Transformed", ["from", "to", "how"], list(self.transformed)),
            ("Dropped", ["key", "reason"], list(self.dropped)),
            ("Filled", ["key", "value"], list(self.filled)),
            ("Copied", ["from", "to"], list(self.mapped)),
        ]
        for title, header, rows in tables:
            out += [f"## {title} ({len(rows)})", ""]
            if rows:
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        return "\n".join(out)

    def write(self, folder: Path) -> None:
        """``folder/conversion.json`` and ``folder/conversion.md``."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "conversion.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        (folder / "conversion.md").write_text(self.markdown())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
