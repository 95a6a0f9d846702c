"""Heads that objectives and tasks put on top of an encoder. Registered heads (kind ``head``) derive
from :class:`Head` and are built from a :class:`HeadShape`."""

from vlkit.heads.base import Head, HeadShape
from vlkit.heads.box import BoxHead
from vlkit.heads.classifier import ClassifierHead, VLMoClassifierHead
from vlkit.heads.itm import ITMHead
from vlkit.heads.mlm import MLMHead, MLMHeadConfig

__all__ = ["BoxHead", "ClassifierHead", "Head", "HeadShape", "ITMHead", "MLMHead", "MLMHeadConfig",
           "VLMoClassifierHead"]
