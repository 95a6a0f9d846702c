"""Applying a recipe's tower ``init`` keys to a freshly built encoder (called by
:func:`vlkit.build.build_encoder`)."""

from __future__ import annotations

import logging

from torch import Tensor

from vlkit.encoders.albef import AlbefEncoder
from vlkit.encoders.base import Encoder, EncoderConfig
from vlkit.encoders.dual import DualEncoder, TimmImageTower
from vlkit.encoders.mome import MomeConfig, MomeEncoder
from vlkit.nn.bert import BertStack
from vlkit.nn.vit import VisionTransformer
from vlkit.weights.beit_mome import load_mome
from vlkit.weights.hf_bert import load_bert
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import WeightSource
from vlkit.weights.timm_vit import load_timm_backbone, load_vit

log = logging.getLogger("vlkit.weights")


def _image(tower: VisionTransformer | TimmImageTower, init: WeightSource) -> LoadReport:
    source = init.source("image")
    if isinstance(tower, TimmImageTower):
        return load_timm_backbone(tower.model, source)
    return load_vit(tower, source)


def _text(encoder: Encoder, stack: BertStack, init: WeightSource) -> LoadReport:
    held: dict[str, dict[str, Tensor]] = {}
    report = load_bert(stack, init.source("text"), head_sink=held)
    for head, state in held.items():
        encoder.hold_head_weights(head, state)
    return report


def initialize_towers(encoder: Encoder, cfg: EncoderConfig) -> list[LoadReport]:
    """Load the pre-trained weights ``cfg``'s ``init`` keys name (:meth:`EncoderConfig.tower_inits`) into
    ``encoder``'s towers.

    Returns one report per key (none on the ``meta`` device, where there is nothing to load into).

    Raises:
        vlkit.weights.TowerInitError: a source that cannot be read or does not fit the recipe's shapes.
    """
    if any(p.is_meta for p in encoder.parameters()):
        return []
    inits = cfg.tower_inits()
    image, text = inits.get("image"), inits.get("text")
    reports: list[LoadReport] = []
    if isinstance(encoder, AlbefEncoder):
        if image:
            reports.append(_image(encoder.visual_encoder, image))
        if text:
            reports.append(_text(encoder, encoder.text_encoder, text))
    elif isinstance(encoder, DualEncoder):
        if image:
            reports.append(_image(encoder.image_tower, image))
        if text:
            reports.append(_text(encoder, encoder.text_tower, text))
    elif isinstance(encoder, MomeEncoder) and isinstance(cfg, MomeConfig):
        if cfg.init is not None:
            reports.append(load_mome(encoder, cfg.init.source("image"), experts=cfg.init_experts))
    elif inits:
        raise ValueError(f"encoder `{cfg.type}` ({type(encoder).__name__}) does not support tower `init` keys")
    return reports


def tower_init_keys(cfg: EncoderConfig) -> list[str]:
    """The recipe keys of ``cfg`` that name tower weights (``encoder.image.init``, ``encoder.text.init``,
    ``encoder.init``), for messages."""
    return [f"encoder.{tower}.init" if tower else "encoder.init" for tower in cfg.tower_inits()]
