"""The head contract: every registered head (registry kind ``head``) is built the same way, from the
shape its objective asks for (:meth:`Head.from_shape`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from torch import nn

HeadT = TypeVar("HeadT", bound="Head")


@dataclass(frozen=True)
class HeadShape:
    """What an objective asks of a head: ``[N, in_dim]`` → ``[N, out_dim]``.

    Attributes:
        in_dim: input width (the fused width ``D``; ``k·D`` for ``k`` concatenated images).
        out_dim: outputs (2 for match / no match, 4 for a box, the classes of a classifier).
        hidden: hidden width of heads with a hidden layer (None: ``in_dim``).
    """

    in_dim: int
    out_dim: int
    hidden: int | None = None

    @property
    def hidden_dim(self) -> int:
        return self.in_dim if self.hidden is None else self.hidden


class Head(nn.Module):
    """Base of registered heads: a subclass builds itself from a :class:`HeadShape` (the one calling
    convention of the ``head`` registry), e.g. ``ITMHead.from_shape(HeadShape(768, 2))``."""

    @classmethod
    def from_shape(cls: type[HeadT], shape: HeadShape) -> HeadT:
        raise NotImplementedError(f"{cls.__name__} does not say how to build it from a HeadShape")
