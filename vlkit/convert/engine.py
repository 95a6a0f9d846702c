"""The conversion itself, for any :class:`~vlkit.convert.layout.Layout`.

Official → vlkit (:func:`to_vlkit`): every source key is dropped with a reason or renamed by a rule;
each renamed key must exist in the recipe's model with the same shape (position tables are resized
for another resolution); tensors the model ties must agree. A model key the checkpoint does not
provide is an error when the checkpoint has the part it belongs to (a truncated or foreign file);
when the checkpoint lacks the whole part (no momentum copies, a head the layout does not have) it is
filled as ``init_from`` would: from an objective's init alias, from the online weight a teacher copy
mirrors, else with vlkit's own initialization — and reported.

vlkit → official (:func:`to_official`): the same rules backwards, plus the official keys vlkit does
not store but can recreate (``position_ids``, aliased biases).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlkit.convert.layout import Layout
from vlkit.convert.report import Accounting
from vlkit.convert.rules import first_rule
from vlkit.convert.target import Target
from vlkit.weights.init_from import teacher_counterpart

MAX_PROBLEMS = 40


class ConversionError(ValueError):
    """The checkpoint does not convert: unknown, missing or mis-shaped keys (each named)."""

    def __init__(self, title: str, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{title}:\n  " + "\n  ".join(shown) + more)
        self.problems = problems


def _shape(shape: torch.Size) -> str:
    return str(tuple(shape))


def shape_hint(vkey: str, found: torch.Size, expected: torch.Size) -> str:
    """Advice for the usual reasons a shape differs (recipe settings the checkpoint disagrees with)."""
    if vkey.endswith("patch_embed.proj.weight") and len(expected) == 4 and expected[-1] == 1:
        return ("; the recipe's image tower has a convolutional stem, the checkpoint linear patches: "
                "override encoder.image.stem=patch (ALBEF) or encoder.stem=patch (VLMo)")
    if vkey.endswith(("image_queue", "text_queue", "idx_queue")) and len(found) == 2:
        return f"; the checkpoint's queue holds {found[1]} entries: override objectives.<itc>.queue_size={found[1]}"
    if vkey.endswith("word_embeddings.weight"):
        return f"; the checkpoint has a vocabulary of {found[0]}: set the recipe's vocab_size to it"
    if vkey.endswith("token_type_embeddings.weight") and vkey.startswith("encoder.token_type"):
        return f"; the checkpoint has {found[0]} token types (VLMo NLVR2): override encoder.type_vocab_size={found[0]}"
    return ""


class _Forward:
    """State of one official → vlkit conversion."""

    def __init__(self, source: dict[str, Tensor], layout: Layout, target: Target, acc: Accounting) -> None:
        self.source, self.layout, self.target, self.acc = source, layout, target, acc
        self.state: dict[str, Tensor] = {}
        self.keys = set(target.shapes)
        self.virtual: dict[str, tuple[str, Tensor, str]] = {}  # keys of parts the recipe lacks: (official, value, why)
        self.problems: list[str] = []
        self.groups = {layout.group(k) for k in source}

    def drop_or_map(self, key: str) -> None:
        """Drop source ``key`` (checking an alias is equal) or map it to a model key of the right shape."""
        value = self.source[key]
        drop = next((d for d in self.layout.drops if d.matches(key, self.keys)), None)
        if drop is not None:
            alias = drop.alias_of(key)
            if alias is not None and (alias not in self.source or not torch.equal(self.source[alias], value)):
                self.problems.append(f"`{key}` should equal `{alias}` (vlkit keeps only that one) but "
                                     + ("the checkpoint lacks it" if alias not in self.source else "differs from it"))
            if drop.check is not None and not drop.check(value):
                self.problems.append(f"`{key}`: unexpected value for a key vlkit drops ({drop.reason})")
            self.acc.dropped.append((key, drop.reason))
            return
        found = first_rule(self.layout.rules, key, official=True)
        if found is None:
            self.problems.append(f"`{key}` {_shape(value.shape)}: not part of the {self.layout.title} (no rule maps "
                                 "it; another --layout?)")
            return
        rule, vkey = found
        notes = []
        if rule.transform is not None:
            value = rule.transform.forward(value)
            notes.append(rule.transform.note)
        if vkey not in self.target.shapes:
            if self.target.has_component(rule.component):
                self.problems.append(f"`{key}` → `{vkey}`: the recipe's model has no such weight")
            else:
                self.virtual[vkey] = (key, value, rule.absent)
            return
        expected = self.target.shapes[vkey]
        if value.shape != expected:
            resized = self.layout.resize(vkey, value, expected)
            if resized is None:
                hint = shape_hint(vkey, value.shape, expected)
                self.problems.append(f"`{key}` → `{vkey}`: shape {_shape(value.shape)} in the checkpoint, "
                                     f"{_shape(expected)} in the recipe's model{hint}")
                return
            value, how = resized
            notes.append(how)
        self.state[vkey] = value
        if notes:
            self.acc.transformed.append((key, vkey, "; ".join(notes)))
        else:
            self.acc.mapped.append((key, vkey))

    def check_ties(self) -> None:
        """Tensors the model ties (one parameter under several names) must be equal in the state."""
        for vkey, others in self.target.tied.items():
            for other in others:
                if vkey < other and vkey in self.state and other in self.state \
                        and not torch.equal(self.state[vkey], self.state[other]):
                    self.problems.append(f"`{vkey}` and `{other}` are one tensor in the recipe's model but differ in "
                                         "the checkpoint")

    def missing(self) -> list[tuple[str, str]]:
        """Model keys the mapping did not produce that may be filled, with why (errors for the rest)."""
        out = []
        for vkey in self.target.shapes:
            if vkey in self.state:
                continue
            tied = next((o for o in self.target.tied.get(vkey, []) if o in self.state), None)
            if tied is not None:
                self.state[vkey] = self.state[tied]
                self.acc.filled.append((vkey, f"the same tensor as `{tied}` in the recipe's model"))
                continue
            back = first_rule(self.layout.rules, vkey, official=False)
            official = back[1] if back is not None else None
            if official is not None and self.layout.group(official) in self.groups:
                self.problems.append(f"`{official}` (→ `{vkey}` {_shape(self.target.shapes[vkey])}) is missing "
                                     "from the checkpoint")
                continue
            why = (f"the checkpoint has no `{self.layout.group(official)}`" if official is not None
                   else f"no counterpart in the {self.layout.title}")
            out.append((vkey, why))
        return out

    def _needs_init(self, vkey: str) -> bool:
        """Whether ``vkey`` can only take vlkit's initialization: no usable init alias, and not a teacher
        copy (online keys are filled first, so a teacher copy always finds its online weight)."""
        alias, shape = self.target.aliases.get(vkey), self.target.shapes[vkey]
        for pool in (self.state, {k: v for k, (_, v, _) in self.virtual.items()}):
            if alias is not None and alias in pool and pool[alias].shape == shape:
                return False
        return teacher_counterpart(vkey) not in self.target.shapes

    def fill(self, wanted: list[tuple[str, str]]) -> None:
        """Fill as ``init_from`` would: init alias, then the online weight of a teacher copy, then vlkit's init."""
        used_virtual: dict[str, list[str]] = {}
        wanted = sorted(wanted, key=lambda kw: kw[0].startswith("teacher."))
        initial = self.target.initial_values([k for k, _ in wanted if self._needs_init(k)])
        for vkey, why in wanted:
            expected = self.target.shapes[vkey]
            alias = self.target.aliases.get(vkey)
            online = teacher_counterpart(vkey)
            if alias is not None and alias in self.state and self.state[alias].shape == expected:
                self.state[vkey] = self.state[alias]
                self.acc.filled.append((vkey, f"{why}: `{alias}` (the objective's init alias)"))
            elif alias is not None and alias in self.virtual and self.virtual[alias][1].shape == expected:
                self.state[vkey] = self.virtual[alias][1]
                used_virtual.setdefault(alias, []).append(vkey)
                self.acc.filled.append((vkey, f"{why}: `{self.virtual[alias][0]}` (through the init alias `{alias}`)"))
            elif online is not None and online in self.state:
                self.state[vkey] = self.state[online]
                self.acc.filled.append((vkey, f"{why}: a copy of the online weight (`{online}`)"))
            else:
                self.state[vkey] = initial[vkey]
                self.acc.filled.append((vkey, f"{why}: vlkit's initialization (recipe seed)"))
        for vkey, (official, _, why) in self.virtual.items():
            if vkey in used_virtual:
                targets = ", ".join(f"`{t}`" for t in used_virtual[vkey])
                self.acc.transformed.append((official, used_virtual[vkey][0], f"{why}; used to initialize {targets}"))
            else:
                self.acc.dropped.append((official, why))


def to_vlkit(source: dict[str, Tensor], layout: Layout, target: Target, acc: Accounting) -> dict[str, Tensor]:
    """Convert an official state dict; returns the vlkit model state (every model key), fills ``acc``.

    Raises:
        ConversionError: unknown, missing, mis-shaped or inconsistent keys, all listed.
    """
    run = _Forward(source, layout, target, acc)
    for key in sorted(source):
        run.drop_or_map(key)
    run.check_ties()
    wanted = run.missing()
    if run.problems:
        raise ConversionError(f"{acc.source} does not convert to the recipe's model ({layout.title})", run.problems)
    run.fill(wanted)
    run.check_ties()
    if run.problems:
        raise ConversionError(f"{acc.source}: inconsistent filled weights", run.problems)
    return {k: run.state[k] for k in target.shapes}


def to_official(state: dict[str, Tensor], layout: Layout, target: Target, acc: Accounting) -> dict[str, Tensor]:
    """Convert a vlkit model state to the official ``layout``; fills ``acc``.

    Raises:
        ConversionError: keys of another shape than the recipe's model (the wrong recipe), or weights the
            official layout cannot hold (a convolutional stem), each named.
    """
    wrong = [f"`{k}`: {_shape(v.shape)} in the checkpoint, {_shape(target.shapes[k])} in the recipe's model"
             for k, v in state.items() if k in target.shapes and v.shape != target.shapes[k]]
    if wrong:
        raise ConversionError(f"{acc.source} does not fit the recipe's model (pass the recipe it was made with)", wrong)
    refused: dict[str, list[str]] = {}
    for key, value in state.items():
        if why := layout.refuse(key, value):
            refused.setdefault(why, []).append(f"`{key}` {_shape(value.shape)}")
    if refused:
        count = sum(len(keys) for keys in refused.values())
        raise ConversionError(f"{acc.source} holds {count} weight(s) the {layout.title} cannot hold, so nothing was "
                              f"written: {'; '.join(refused)}", [k for keys in refused.values() for k in keys])
    out: dict[str, Tensor] = {}
    for vkey, value in state.items():
        found = first_rule(layout.rules, vkey, official=False)
        if found is None:
            acc.dropped.append((vkey, f"no place in the {layout.title}"))
            continue
        rule, key = found
        if rule.transform is not None:
            out[key] = rule.transform.backward(value)
            acc.transformed.append((vkey, key, rule.transform.note.replace("→", "←")))
        else:
            out[key] = value
            acc.mapped.append((vkey, key))
    for key, value, how in layout.derive(out):
        if key not in out:
            out[key] = value
            acc.filled.append((key, how))
    return out
