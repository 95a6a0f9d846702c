"""Applying a recipe's tower ``init`` keys to a freshly built encoder (called by
:func:`vlkit.build.build_encoder`)."""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from vlkit.encoders.albef import AlbefEncoder
from vlkit.encoders.base import Encoder, EncoderConfig
from vlkit.encoders.dual import DualEncoder, TimmImageTower
from vlkit.encoders.mome import MomeEncoder
from vlkit.nn.bert import BertStack
from vlkit.nn.vit import VisionTransformer
from vlkit.weights.beit_mome import load_mome
from vlkit.weights.hf_bert import load_bert
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import parse_source
from vlkit.weights.timm_vit import load_timm_backbone, load_vit

log = logging.getLogger("vlkit.weights")


def _init(section: Any) -> str | None:
    return getattr(section, "init", None)


def _image(tower: VisionTransformer | TimmImageTower, init: str) -> LoadReport:
    source = parse_source(init, "image")
    if isinstance(tower, TimmImageTower):
        return load_timm_backbone(tower.model, source)
    return load_vit(tower, source)


def _text(encoder: Encoder, stack: BertStack, init: str) -> LoadReport:
    held: dict[str, dict[str, Tensor]] = {}
    report = load_bert(stack, parse_source(init, "text"), head_sink=held)
    for head, state in held.items():
        encoder.hold_head_weights(head, state)
    return report


def initialize_towers(encoder: Encoder, cfg: EncoderConfig) -> list[LoadReport]:
    """Load the pre-trained weights ``cfg``'s ``init`` keys name into ``encoder``'s towers.

    Returns one report per key (none on the ``meta`` device, where there is nothing to load into).

    Raises:
        vlkit.weights.TowerInitError: a source that cannot be read or does not fit the recipe's shapes.
    """
    if any(p.is_meta for p in encoder.parameters()):
        return []
    reports: list[LoadReport] = []
    image, text = _init(getattr(cfg, "image", None)), _init(getattr(cfg, "text", None))
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
    elif isinstance(encoder, MomeEncoder):
        if (init := _init(cfg)) is not None:
            reports.append(load_mome(encoder, parse_source(init, "image"), experts=encoder.cfg.init_experts))
    elif image or text or _init(cfg):
        raise ValueError(f"encoder `{cfg.type}` ({type(encoder).__name__}) does not support tower `init` keys")
    return reports


def tower_init_keys(cfg: EncoderConfig) -> list[str]:
    """The recipe keys of ``cfg`` that name tower weights (``encoder.image.init``, ``encoder.text.init``,
    ``encoder.init``), for messages."""
    keys = [f"encoder.{part}.init" for part in ("image", "text") if _init(getattr(cfg, part, None))]
    return keys + (["encoder.init"] if _init(cfg) else [])
