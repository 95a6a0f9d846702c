"""Objectives (registry kind ``objective``) and negative samplers (kind ``negatives``)."""

from vlkit.objectives import answers, bifusion, classify, grounding, itc, itm, mim, mlm, negatives, phrase_patch
from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput

__all__ = [
    "Objective", "ObjectiveConfig", "ObjectiveContext", "ObjectiveOutput", "answers", "bifusion", "classify",
    "grounding", "itc", "itm", "mim", "mlm", "negatives", "phrase_patch",
]
