"""The training-time rules where the official ALBEF and VLMo code differ from vlkit's own choices, as
recipe settings with the official rule as the base recipes' default: which parameters get no weight
decay (``train.weight_decay_exempt``) and which candidates ITM never draws as negatives
(``objectives.itm.negatives.exclude``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlkit.convert.target import build_model
from vlkit.recipe import load_recipe
from vlkit.train.optim import decays, param_groups


def exempt_names(recipe: str, rule: str) -> tuple[set[str], set[str]]:
    """(decayed, exempt) trainable parameter names of ``recipe``'s model under ``rule``."""
    model = build_model(load_recipe(recipe), "meta")
    decayed, exempt = set(), set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decayed if decays(name, param, rule) else exempt).add(name)  # type: ignore[arg-type]
    return decayed, exempt


# --------------------------------------------------------------------------- weight decay
def test_albef_rule_decays_positions_cls_and_temperature_like_the_optimizer_factory() -> None:
    """ALBEF's ``add_weight_decay``: ``len(param.shape) == 1 or name.endswith(".bias")`` is exempt, nothing else
    (the top-level model has no ``no_weight_decay()``)."""
    decayed, exempt = exempt_names("albef/tiny", "albef")
    for name in ("encoder.visual_encoder.pos_embed", "encoder.visual_encoder.cls_token",
                 "encoder.text_encoder.embeddings.position_embeddings.weight",
                 "encoder.text_encoder.embeddings.token_type_embeddings.weight",
                 "encoder.text_encoder.embeddings.word_embeddings.weight", "objectives.itc.temp.value"):
        assert name in decayed, name
    for name in ("encoder.text_encoder.embeddings.LayerNorm.weight", "encoder.visual_encoder.norm.weight",
                 "objectives.itm.head.fc.bias", "encoder.visual_encoder.blocks.0.attn.qkv.bias"):
        assert name in exempt, name
    model = build_model(load_recipe("albef/tiny"), "meta")
    for name, param in model.named_parameters():  # the rule, restated over every parameter
        if param.requires_grad:
            assert (name in exempt) == (param.ndim == 1 or name.endswith(".bias")), name


def test_vlmo_rule_is_the_substring_list_of_set_schedule() -> None:
    """VLMo's ``no_decay`` substrings: the relative-position bias table is exempt (its name contains
    ``bias``); the experts' ``norm2_*``, layer scales, [CLS], embeddings and logit scales are decayed."""
    decayed, exempt = exempt_names("vlmo/tiny", "vlmo")
    for name in ("encoder.relative_position_bias_table", "encoder.transformer.blocks.0.attn.q_bias",
                 "encoder.transformer.blocks.0.norm1.weight", "encoder.transformer.norm.weight",
                 "encoder.text_embeddings.LayerNorm.weight", "objectives.mlm.head.predictions.bias",
                 "objectives.mlm.head.predictions.transform.LayerNorm.weight"):
        assert name in exempt, name
    for name in ("encoder.transformer.blocks.0.norm2_text.weight", "encoder.transformer.blocks.0.norm2_imag.weight",
                 "encoder.transformer.blocks.0.gamma_1", "encoder.transformer.cls_token",
                 "encoder.text_embeddings.word_embeddings.weight", "encoder.token_type_embeddings.weight",
                 "objectives.itc.temp.value", "objectives.itc.vl_temp.value"):
        assert name in decayed, name


def test_vlkit_rule_exempts_embeddings_and_every_small_tensor() -> None:
    decayed, exempt = exempt_names("albef/tiny", "vlkit")
    for name in ("encoder.visual_encoder.pos_embed", "encoder.visual_encoder.cls_token",
                 "encoder.text_encoder.embeddings.position_embeddings.weight", "objectives.itc.temp.value"):
        assert name in exempt, name
    assert "encoder.text_encoder.embeddings.word_embeddings.weight" in decayed


@pytest.mark.parametrize(("recipe", "rule"), [("albef/base", "albef"), ("albef/tiny", "albef"), ("vlmo/base", "vlmo"),
                                              ("vlmo/tiny", "vlmo"), ("dual/base", "vlkit")])
def test_base_recipes_name_their_papers_rule(recipe: str, rule: str) -> None:
    assert load_recipe(recipe).train.weight_decay_exempt == rule


def test_the_optimizer_groups_follow_the_recipe_rule() -> None:
    model = nn.Module()
    model.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
    model.norm = nn.LayerNorm(4)
    model.temp = nn.Parameter(torch.tensor(0.07))
    for rule, decayed in (("albef", {"pos_embed", "temp"}), ("vlkit", set())):
        groups = param_groups(model, weight_decay=0.02, lr=1e-4, exempt=rule)  # type: ignore[arg-type]
        named = {id(p): n for n, p in model.named_parameters()}
        got = {named[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        assert got == decayed, rule


# --------------------------------------------------------------------------- ITM negatives
@pytest.mark.parametrize(("recipe", "exclude"), [("albef/base", "diagonal"), ("albef/tiny", "diagonal"),
                                                 ("vlmo/base", "diagonal"), ("vlmo/tiny", "diagonal"),
                                                 ("finetune/albef/retrieval_tiny", "same_image")])
def test_recipes_name_their_papers_negative_exclusion(recipe: str, exclude: str) -> None:
    """Pre-training (ALBEF ``model_pretrain.py``, VLMo ``compute_itm_hardneg``) zeroes only the diagonal of
    the sampling weights; ALBEF's retrieval fine-tuning (``model_retrieval.py``) every same-``idx`` pair."""
    assert load_recipe(recipe).objectives["itm"].negatives.exclude == exclude


def test_random_negatives_take_the_exclusion_setting_too() -> None:
    itm = load_recipe("albef/tiny", ["objectives.itm.negatives={type: random, exclude: same_image}"]).objectives["itm"]
    assert itm.negatives.exclude == "same_image" and not itm.needs_similarity
