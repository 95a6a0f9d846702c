"""Key rules between an official layout and vlkit's, usable in both directions.

A :class:`Rule` renames a key prefix (``visual_encoder_m.`` ↔ ``teacher.copies.encoder.visual_encoder.``)
or one exact key (``temp`` ↔ ``objectives.itc.temp.value``), optionally only for a range of layer
indices that follow the prefix, shifted (NLVR2: official text layer ``6 + j`` ↔ bi-fusion layer ``j``),
and optionally with an invertible value transform (a temperature stored as ``log(1/τ)``). A
:class:`Drop` names official keys vlkit has no place for, with the reason, and may verify that
nothing is lost (an alias equal to the tensor vlkit keeps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Transform:
    """An invertible value transform: ``forward`` official → vlkit, ``backward`` vlkit → official."""

    forward: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor], Tensor]
    note: str


LOG_SCALE_TO_TEMPERATURE = Transform(lambda t: torch.exp(-t), lambda t: torch.log(1.0 / t),
                                     "logit scale log(1/τ) → temperature τ")
TEMPERATURE_TO_LOG_SCALE = Transform(lambda t: torch.log(1.0 / t), lambda t: torch.exp(-t),
                                     "temperature τ → logit scale log(1/τ)")


def _rest(key: str, prefix: str) -> str | None:
    """What follows ``prefix`` in ``key`` (``""`` for an exact key), or None when it does not match."""
    if prefix.endswith("."):
        return key[len(prefix):] if key.startswith(prefix) else None
    return "" if key == prefix else None


@dataclass(frozen=True)
class Rule:
    """``official`` prefix (or exact key) ↔ ``vlkit`` prefix (or exact key).

    Attributes:
        official: official key prefix ending in ``.``, or an exact key.
        vlkit: vlkit key prefix ending in ``.``, or an exact key.
        component: vlkit prefix the recipe's model must hold for this rule to apply; when it holds
            none, the official keys are dropped with ``absent`` as the reason.
        absent: why, when the component is missing (e.g. "the recipe has no mlm objective").
        first: with ``layered``: the first official index the rule covers.
        stop: with ``layered``: one past the last official index covered (None: no end).
        shift: with ``layered``: vlkit index = official index + ``shift``.
        layered: the key part after the prefix starts with a layer index.
        transform: value transform (None: copied bit for bit).
    """

    official: str
    vlkit: str
    component: str
    absent: str
    first: int = 0
    stop: int | None = None
    shift: int = 0
    layered: bool = False
    transform: Transform | None = None

    def _move(self, rest: str, shift: int, lo: int, hi: int | None) -> str | None:
        if not self.layered:
            return rest
        index, dot, tail = rest.partition(".")
        if not index.isdigit() or not dot:
            return None
        i = int(index)
        if i < lo or (hi is not None and i >= hi):
            return None
        return f"{i + shift}.{tail}"

    def to_vlkit(self, key: str) -> str | None:
        """The vlkit key of official ``key``, or None when the rule does not cover it."""
        rest = _rest(key, self.official)
        if rest is None:
            return None
        moved = self._move(rest, self.shift, self.first, self.stop)
        return None if moved is None else self.vlkit + moved

    def to_official(self, key: str) -> str | None:
        """The official key of vlkit ``key``, or None when the rule does not cover it."""
        rest = _rest(key, self.vlkit)
        if rest is None:
            return None
        stop = None if self.stop is None else self.stop + self.shift
        moved = self._move(rest, -self.shift, self.first + self.shift, stop)
        return None if moved is None else self.official + moved


@dataclass(frozen=True)
class Drop:
    """Official keys vlkit does not keep.

    Attributes:
        pattern: regular expression the whole official key matches.
        reason: why the key is not needed.
        same_as: a ``re.sub`` template giving the key whose tensor this one must equal (an alias);
            a difference is an error, since the conversion would lose it.
        when: optional condition on the target's keys (e.g. only when the model has no such table).
        check: optional test of the value (e.g. a ``position_ids`` buffer holds ``0 .. N-1``); a
            failure is an error, since the conversion would lose something.
    """

    pattern: str
    reason: str
    same_as: str | None = None
    when: Callable[[set[str]], bool] | None = None
    check: Callable[[Tensor], bool] | None = None

    def matches(self, key: str, target_keys: set[str]) -> bool:
        return re.fullmatch(self.pattern, key) is not None and (self.when is None or self.when(target_keys))

    def alias_of(self, key: str) -> str | None:
        return None if self.same_as is None else re.sub(self.pattern, self.same_as, key)


def first_rule(rules: list[Rule], key: str, *, official: bool) -> tuple[Rule, str] | None:
    """The first rule covering ``key`` (an official key if ``official``, else a vlkit key) and the other side."""
    for rule in rules:
        other = rule.to_vlkit(key) if official else rule.to_official(key)
        if other is not None:
            return rule, other
    return None


def temperature_transform(official_is_log_scale: bool, vlkit_is_log_scale: bool) -> Transform | None:
    """The transform between a temperature stored one way officially and another in vlkit, or None."""
    if official_is_log_scale == vlkit_is_log_scale:
        return None
    return LOG_SCALE_TO_TEMPERATURE if official_is_log_scale else TEMPERATURE_TO_LOG_SCALE


Refuse = Callable[[str, Tensor], "str | None"]
"""``(vlkit key, tensor)`` → why the official layout cannot hold it, or None (vlkit → official)."""


def nothing_refused(key: str, value: Tensor) -> str | None:
    return None


def conv_stem_refusal(family: str, fix: str) -> Refuse:
    """Refuse the convolutional stem (:mod:`vlkit.nn.stem`): official ALBEF and VLMo embed patches with one
    linear projection (timm's ``PatchEmbed``, ``patch_embed.proj`` of shape ``[D, 3, P, P]``); the stem's
    layers have no place there, and its ``patch_embed.proj`` (a 1×1 convolution) has another shape."""
    why = (f"official {family} embeds patches with one linear projection (patch_embed.proj [D, 3, P, P]) and has no "
           f"convolutional stem, so this weight cannot be loaded there; a model trained with the conv stem has no "
           f"official counterpart (train with {fix} to export)")

    def refuse(key: str, value: Tensor) -> str | None:
        if ".patch_embed.stem." in key:
            return why
        if key.endswith(".patch_embed.proj.weight") and value.ndim == 4 and value.shape[-1] == 1 \
                and value.shape[-2] == 1:
            return why  # the stem's 1×1 projection, not a patch projection
        return None

    return refuse


def is_arange(value: Tensor) -> bool:
    """Whether ``value`` is ``[[0, 1, ..., n-1]]`` (a BERT ``position_ids`` buffer)."""
    flat = value.reshape(-1)
    return bool(torch.equal(flat.long(), torch.arange(flat.numel())))

