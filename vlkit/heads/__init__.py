"""Heads (registry kind ``head``) that objectives and tasks put on top of an encoder."""

from vlkit.heads.box import BoxHead
from vlkit.heads.classifier import ClassifierHead, VLMoClassifierHead
from vlkit.heads.itm import ITMHead
from vlkit.heads.mlm import MLMHead, MLMHeadConfig

__all__ = ["BoxHead", "ClassifierHead", "ITMHead", "MLMHead", "MLMHeadConfig", "VLMoClassifierHead"]
