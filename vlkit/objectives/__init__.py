"""Objectives (registry kind ``objective``) and negative samplers (kind ``negatives``)."""

from vlkit.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput

__all__ = ["Objective", "ObjectiveConfig", "ObjectiveOutput"]
