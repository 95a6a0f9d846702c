"""Objectives (registry kind ``objective``) and negative samplers (kind ``negatives``)."""

from vlkit.objectives import answers, bifusion, classify, itc, itm, mim, mlm, negatives
from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput

__all__ = [
    "Objective", "ObjectiveConfig", "ObjectiveContext", "ObjectiveOutput", "answers", "bifusion", "classify", "itc",
    "itm", "mim", "mlm", "negatives",
]
