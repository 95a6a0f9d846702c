"""Official VLMo checkpoints (reference spec §7.2) ⇄ vlkit's MoME model.

vlkit's MoME keeps VLMo's module names (``transformer.*``, ``text_embeddings.*``, ``pooler``,
``itc_*_proj``) under ``encoder.``, and VLMo's single relative-position table
``[num_buckets, heads · layers]`` as is: block ``i`` reads columns ``i·H .. (i+1)·H - 1``, rows are
VLMo's buckets (:mod:`vlkit.nn.relative_position`). So the table maps unchanged at the checkpoint's
resolution and is resized (:func:`~vlkit.convert.resize.resize_relative_table`) for another one.
The heads live with the objectives: ``logit_scale`` / ``logit_vl_scale`` in ITC, ``itm_score`` in ITM,
``mlm_score`` in MLM (untied decoder), the fine-tuned classifiers with the VQA / NLVR2 tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlkit.convert.layout import Layout, first_component
from vlkit.convert.resize import resize_position_grid, resize_relative_table, truncate_positions
from vlkit.convert.rules import Drop, Rule, conv_stem_refusal, is_arange, temperature_transform
from vlkit.convert.target import Target
from vlkit.encoders.mome import MomeConfig
from vlkit.objectives.itc import ITC
from vlkit.objectives.itm import ITM
from vlkit.objectives.mlm import MLM

TEXT_POSITIONS = "encoder.text_embeddings.position_embeddings.weight"
VL_EXPERT_PARTS = (".mlp_vl.", ".norm2_vl.")


def class_count(source: dict[str, Tensor]) -> int | None:
    """Answers of the checkpoint's VQA classifier (3129 for VQAv2), if it has one."""
    head = source.get("vqa_classifier.3.weight")
    return None if head is None else int(head.shape[0])


def group(key: str) -> str:
    """The part of a VLMo checkpoint a key belongs to; the VL experts are a part of their own, since
    the stage-2 (text-only) checkpoints have none."""
    if key.startswith("transformer.blocks.") and any(p in key for p in VL_EXPERT_PARTS):
        return "transformer.blocks.*.{mlp_vl,norm2_vl} (VL experts)"
    return first_component(key)


def _drops() -> list[Drop]:
    return [
        Drop(r"text_embeddings\.position_ids", "BERT's constant position-index buffer; vlkit computes positions",
             check=is_arange),
        Drop(r"text_embeddings\.position_embeddings\.weight", "absolute text positions are unused with relative "
             "positions (HF builds the table regardless)", when=lambda keys: TEXT_POSITIONS not in keys),
        Drop(r"(text_|text_imag_)?relative_position_index", "a bucket-index matrix; vlkit rebuilds it for each "
             "token layout"),
    ]


def _rules(target: Target) -> list[Rule]:
    itc = target.objective(ITC) or "itc"
    itm = target.objective(ITM) or "itm"
    mlm = target.objective(MLM) or "mlm"
    vqa = target.objective(names=("vqa",)) or "vqa"
    nlvr2 = target.objective(names=("nlvr2",)) or "nlvr2"
    itc_cfg = target.itc_config()
    log_scale = itc_cfg is None or itc_cfg.parametrization == "log_scale"
    scale = temperature_transform(True, log_scale)
    no_vl = "the recipe's encoder has no VL experts (vl_start = depth), hence no VL-path projection"
    enc = "encoder."
    rules = [
        Rule("relative_position_bias_table", enc + "relative_position_bias_table",
             enc + "relative_position_bias_table", "the recipe's encoder uses absolute positions"),
        Rule("transformer.", enc + "transformer.", enc, "the recipe has no encoder"),
        Rule("text_embeddings.", enc + "text_embeddings.", enc, "the recipe has no encoder"),
        Rule("token_type_embeddings.", enc + "token_type_embeddings.", enc, "the recipe has no encoder"),
        Rule("pooler.", enc + "pooler.", enc, "the recipe has no encoder"),
        Rule("itc_text_proj.", enc + "itc_text_proj.", enc, "the recipe has no encoder"),
        Rule("itc_image_proj.", enc + "itc_image_proj.", enc, "the recipe has no encoder"),
        Rule("itc_vl_text_proj.", enc + "itc_vl_text_proj.", enc + "itc_vl_text_proj.", no_vl),
        Rule("itc_vl_image_proj.", enc + "itc_vl_image_proj.", enc + "itc_vl_image_proj.", no_vl),
        Rule("logit_scale", f"objectives.{itc}.temp.value", f"objectives.{itc}.", "the recipe has no itc objective",
             transform=scale),
        Rule("logit_vl_scale", f"objectives.{itc}.vl_temp.value", f"objectives.{itc}.vl_temp.",
             "the recipe's itc objective has no VL path (vl_path: false)", transform=scale),
        Rule("itm_score.", f"objectives.{itm}.head.", f"objectives.{itm}.", "the recipe has no itm objective"),
    ]
    head = f"objectives.{mlm}.head.predictions."
    no_mlm = "the recipe has no mlm objective"
    rules += [
        Rule("mlm_score.transform.", head + "transform.", head, no_mlm),
        Rule("mlm_score.decoder.", head + "decoder.", head, no_mlm),
        Rule("mlm_score.bias", head + "bias", head, no_mlm),
        Rule("vqa_classifier.", f"objectives.{vqa}.head.net.", f"objectives.{vqa}.head.",
             "the recipe has no VQA classifier (task: {type: vqa, head: classifier_vlmo})"),
        Rule("nlvr2_classifier.", f"objectives.{nlvr2}.head.net.", f"objectives.{nlvr2}.head.",
             "the recipe has no NLVR2 classifier (task: {type: nlvr2, head: classifier_vlmo})"),
    ]
    return rules


def vlmo_layout(target: Target) -> Layout:
    """The rules of the VLMo layout for the recipe's model."""
    cfg = target.encoder_cfg
    assert isinstance(cfg, MomeConfig)
    span = cfg.max_text_len_of_initckpt

    def resize(key: str, value: Tensor, shape: torch.Size) -> tuple[Tensor, str] | None:
        if key.endswith("relative_position_bias_table"):
            return resize_relative_table(value, shape, span)
        if key.endswith("transformer.pos_embed"):
            return resize_position_grid(value, shape)
        if key.endswith("text_embeddings.position_embeddings.weight"):
            return truncate_positions(value, shape)
        return None

    def derive(state: dict[str, Tensor]) -> list[tuple[str, Tensor, str]]:
        """Official keys vlkit does not keep: BERT's position-index buffer and, with relative positions,
        the text position table VLMo's model builds but never reads; the official model has both, so a
        strict ``load_state_dict`` needs them (an exported table that vlkit does keep is not replaced)."""
        rows = cfg.max_text_len
        words = state.get("text_embeddings.word_embeddings.weight")
        dtype = words.dtype if words is not None else torch.float32
        return [("text_embeddings.position_ids", torch.arange(rows).unsqueeze(0), "BERT's position-index buffer"),
                ("text_embeddings.position_embeddings.weight", torch.zeros(rows, cfg.dim, dtype=dtype),
                 "zeros: the absolute text position table VLMo builds and, with relative positions, never reads")]

    return Layout(family="vlmo", name="vlmo", rules=_rules(target), drops=_drops(), group=group, resize=resize,
                  derive=derive, refuse=conv_stem_refusal("VLMo", "encoder.stem=patch"))


def token_type_hint(source: dict[str, Tensor], target: Target) -> str | None:
    """Advice when the checkpoint's outer token-type table is longer than the recipe's (NLVR2: 3 rows)."""
    table = source.get("token_type_embeddings.weight")
    wanted = target.shapes.get("encoder.token_type_embeddings.weight")
    if table is None or wanted is None or table.shape[0] <= wanted[0]:
        return None
    return (f"the checkpoint's token_type_embeddings has {table.shape[0]} rows (VLMo's NLVR2 adds one for the second "
            f"image); give the recipe encoder.type_vocab_size={table.shape[0]}")
