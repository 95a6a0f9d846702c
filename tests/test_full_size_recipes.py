"""The papers' own downstream recipes at full size (recipes/finetune/{albef,vlmo}/*.yaml without ``_tiny``):
each resolves, builds its model on the meta device (no data, no weights), keeps the official config's
settings, names the official file it mirrors and the paper figure it should reproduce, and is listed in
docs/recipes.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from vlkit.convert.target import build_model
from vlkit.recipe import load_recipe, shipped_recipe_names, shipped_recipes_dir

ROOT = Path(__file__).resolve().parent.parent

# The official configs' values (ALBEF/configs/*.yaml with 8 GPUs as ALBEF's README runs them; VLMo's
# named configs in vlmo/config.py): image side, peak / final learning rate, global batch, and per-recipe
# extras read from the resolved recipe by dotted path.
OFFICIAL: dict[str, dict[str, Any]] = {
    "finetune/albef/retrieval_coco": {"image": 384, "lr": 1e-5, "min_lr": 1e-6, "batch": 256,
                                      "mirrors": "Retrieval_coco.yaml", "eval.k_test": 256,
                                      "objectives.itc.queue_size": 65536,
                                      "objectives.itc.idx_targets": True, "objectives.itc.temperature_range": None,
                                      "objectives.itm.negatives.exclude": "same_image", "objectives.mlm": None},
    "finetune/albef/retrieval_flickr": {"image": 384, "lr": 1e-5, "min_lr": 1e-6, "batch": 256,
                                        "mirrors": "Retrieval_flickr.yaml", "eval.k_test": 128},
    "finetune/albef/vqa": {"image": 384, "lr": 2e-5, "min_lr": 1e-6, "batch": 256, "mirrors": "VQA.yaml",
                           "task.head": "rank", "task.k_test": 128, "task.first_token_twice": True,
                           "task.distill.alpha": 0.4, "train.warmup_steps": 400},
    "finetune/albef/nlvr2": {"image": 384, "lr": 2e-5, "min_lr": 1e-6, "batch": 128, "mirrors": "NLVR.yaml",
                             "task.fusion": "bi", "task.head": "classifier", "task.distill.alpha": 0.4},
    "finetune/albef/ve": {"image": 384, "lr": 2e-5, "min_lr": 1e-6, "batch": 256, "mirrors": "VE.yaml",
                          "task.head": "classifier", "task.distill.alpha": 0.4, "task.distill.ramp_steps": 0},
    "finetune/albef/grounding_refcoco": {"image": 384, "lr": 1e-5, "min_lr": 1e-6, "batch": 256,
                                         "mirrors": "Grounding.yaml", "task.fusion_layer": 3,
                                         "task.format": "refcoco", "data.crop_scale": None},
    "finetune/vlmo/retrieval_coco": {"image": 384, "lr": 3e-5, "min_lr": 0.0, "batch": 3072,
                                     "mirrors": "task_finetune_irtr_coco_base_image384", "train.steps": 3000,
                                     "train.warmup_steps": 300, "encoder.drop_path": 0.2, "eval.k_test": 0,
                                     "objectives.itc.vl_path": False, "objectives.itm": None},
    "finetune/vlmo/retrieval_flickr": {"image": 384, "lr": 3e-5, "min_lr": 0.0, "batch": 3072,
                                       "mirrors": "task_finetune_irtr_f30k_base_image384", "train.steps": 1500,
                                       "train.warmup_steps": 150, "encoder.drop_path": 0.15},
    "finetune/vlmo/vqa": {"image": 480, "lr": 3e-5, "min_lr": 0.0, "batch": 128,
                          "mirrors": "task_finetune_vqa_base_image480", "encoder.drop_path": 0.15,
                          "train.head_lr_mult": 20, "task.head": "classifier_vlmo", "task.max_answers": 3129},
    "finetune/vlmo/nlvr2": {"image": 384, "lr": 5e-5, "min_lr": 0.0, "batch": 128,
                            "mirrors": "task_finetune_nlvr2_base_image384", "task.fusion": "pair",
                            "task.head": "classifier_vlmo"},
}
FULL_SIZE = sorted(n for n in shipped_recipe_names() if n.startswith("finetune/") and not n.endswith("_tiny")
                   and not n.startswith("finetune/dual/"))


def dotted(tree: Any, path: str) -> Any:
    """The value at ``a.b.c`` of the resolved recipe; None where a part is absent (e.g. a removed objective)."""
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def test_every_full_size_recipe_is_checked_here() -> None:
    assert sorted(OFFICIAL) == FULL_SIZE


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_keeps_the_official_settings_and_builds_on_meta(name: str) -> None:
    recipe = load_recipe(name)
    expected = OFFICIAL[name]
    family = name.split("/")[1]
    assert recipe.encoder.input_size == expected["image"]
    assert (recipe.train.lr, recipe.train.min_lr, recipe.train.batch_size) == (expected["lr"], expected["min_lr"],
                                                                               expected["batch"])
    assert recipe.train.weight_decay == (0.02 if family == "albef" else 0.01)
    assert recipe.train.weight_decay_exempt == family
    assert recipe.train.betas == ([0.9, 0.999] if family == "albef" else [0.9, 0.98])
    assert recipe.train.schedule == ("cosine" if family == "albef" else "linear")
    assert 0 <= recipe.train.warmup_steps < recipe.train.steps
    resolved = recipe.to_dict()
    for path, value in expected.items():
        if path not in ("image", "lr", "min_lr", "batch", "mirrors"):
            assert dotted(resolved, path) == value, path
    for distill in (dotted(resolved, "task.distill"), dotted(resolved, "objectives.itc.distill")):
        if distill is not None:  # ALBEF's alpha ramp spans the first epoch, within the run
            assert distill["ramp_steps"] < recipe.train.steps
    model = build_model(recipe, "meta", num_classes=3129 if recipe.task.type == "vqa" else None)
    assert sum(p.numel() for p in model.encoder.parameters()) > 100e6  # base size, not a tiny tower


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_header_names_the_official_config_and_the_paper_figure(name: str) -> None:
    text = (shipped_recipes_dir() / f"{name}.yaml").read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    family = name.split("/")[1]
    if family == "albef":
        assert f"ALBEF/configs/{OFFICIAL[name]['mirrors']}" in header
    else:
        assert f"VLMo's named config {OFFICIAL[name]['mirrors']}" in header \
            or f"Mirrors VLMo's {OFFICIAL[name]['mirrors']}" in header
    assert re.search(r"Paper figure[^:]*: (\w+[\w@ -]* \d+\.\d|see the (ALBEF|VLMo) paper)", header), header
    assert "vlkit convert" in header and "init_from=" in header  # how to start from the official checkpoint
    assert "Data (yours)" in header


def test_docs_map_every_full_size_recipe() -> None:
    docs = (ROOT / "docs" / "recipes.md").read_text()
    for name in OFFICIAL:
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, name
        assert OFFICIAL[name]["mirrors"] in row, name
