"""Objectives (registry kind ``objective``) and negative samplers (kind ``negatives``).

An objective types against :class:`~vlkit.core.step.StepView`; see :mod:`vlkit.objectives.base` for the
contract and docs/extending.md for a plug-in in one small file."""

from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.step import StepView
from vlkit.objectives import answers, bifusion, classify, grounding, itc, itm, mim, mlm, negatives, phrase_patch
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory

__all__ = [
    "Objective", "ObjectiveConfig", "ObjectiveOutput", "PartsFactory", "StepView", "answers", "bifusion", "classify",
    "grounding", "itc", "itm", "mim", "mlm", "negatives", "phrase_patch",
]
