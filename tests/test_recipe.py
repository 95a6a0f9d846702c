"""Recipes: inheritance, merging, overrides, typed validation and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlkit import registry
from vlkit.recipe import find_recipe, list_recipes, load_recipe, parse_value, resolve
from vlkit.schema import RecipeError

PLUGINS = Path(__file__).parent / "plugins"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_yaml_values_are_typed_like_yaml_1_2():
    assert parse_value("3e-4") == pytest.approx(3e-4) and isinstance(parse_value("3e-4"), float)
    assert parse_value("1.0e-6") == pytest.approx(1e-6)
    assert parse_value("null") is None and parse_value("") is None
    assert parse_value("12") == 12 and parse_value("true") is True and parse_value("base") == "base"
    assert parse_value("[1, 2]") == [1, 2] and parse_value("{a: 1}") == {"a": 1}


def test_inheritance_any_depth_lists_and_deep_merge(tmp_path):
    write(tmp_path, "root.yaml", "seed: 1\nencoder: {type: albef, size: tiny, image: {depth: 1}}\n")
    write(tmp_path, "extra.yaml", "description: extra\nencoder: {embed_dim: 16}\n")
    write(tmp_path, "mid/mid.yaml", "base: ../root.yaml\nseed: 2\nencoder: {image: {heads: 2}}\n")
    leaf = write(tmp_path, "mid/leaf/leaf.yaml", "base: [../mid.yaml, ../../extra.yaml]\nencoder: {fusion_layer: 3}\n")
    resolved = resolve(leaf)
    enc = resolved.recipe.encoder
    assert resolved.recipe.seed == 2 and resolved.recipe.description == "extra"
    assert (enc.image.depth, enc.image.heads, enc.embed_dim, enc.fusion_layer) == (1, 2, 16, 3)
    assert enc.image.dim == 64  # from the tiny preset, under the files
    assert [Path(s).name for s in resolved.sources] == ["root.yaml", "mid.yaml", "extra.yaml", "leaf.yaml"]


def test_inheritance_cycle_is_reported_with_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: c.yaml\n")
    write(tmp_path, "c.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match=r"cycle: .*a\.yaml → .*b\.yaml → .*c\.yaml → .*a\.yaml"):
        resolve(tmp_path / "a.yaml")


def test_missing_base_names_the_file(tmp_path):
    child = write(tmp_path, "child.yaml", "base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="nowhere.yaml` does not exist") as err:
        resolve(child)
    assert "child.yaml" in err.value.source


def test_overrides_are_yaml_typed_and_win():
    recipe = load_recipe("albef/tiny", ["seed=7", "encoder.size=base", "encoder.embed_dim=128"])
    assert recipe.seed == 7 and recipe.encoder.image.dim == 768 and recipe.encoder.embed_dim == 128


def test_unknown_key_names_file_line_path_and_suggestion(tmp_path):
    path = write(tmp_path, "r.yaml", "encoder:\n  type: albef\n  size: tiny\n  fusion_layr: 2\n")
    with pytest.raises(RecipeError) as err:
        resolve(path)
    assert err.value.source.endswith("r.yaml:4")
    assert err.value.key == "encoder.fusion_layr"
    assert "unknown key `encoder.fusion_layr`; did you mean `fusion_layer`?" in str(err.value)


def test_unknown_key_from_the_command_line_names_the_override():
    with pytest.raises(RecipeError) as err:
        resolve("albef/tiny", ["encoder.imag.dim=3"])
    assert err.value.source == "command line (encoder.imag.dim=3)"
    assert "did you mean `image`?" in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("seed=abc", "`seed` must be an integer, got a string `abc`"),
    ("encoder.image.qkv_bias=3", "`encoder.image.qkv_bias` must be true or false"),
    ("encoder.attention=flash", "`encoder.attention` is `flash`, not one of auto, xformers, sdpa, math"),
    ("encoder.type=albf", "unknown encoder `albf`; did you mean `albef`?"),
    ("encoder.size=bse", "not a known size; did you mean `base`?"),
    ("encoder.fusion_layer=9", "`encoder.fusion_layer`: must be in [1, 3]"),
    ("encoder.image.image_size=30", "30 is not a multiple of patch_size 8"),
    ("encoder=null", "`encoder` must be a mapping with a `type`, got null"),
    ("encoder.image=5", "`encoder.image` must be a mapping"),
])
def test_type_errors(override, message):
    with pytest.raises(RecipeError) as err:
        resolve("albef/tiny", [override])
    assert message in str(err.value)
    assert err.value.source.startswith("command line")


def test_override_through_a_scalar_says_how_to_fix_it():
    with pytest.raises(RecipeError, match="`seed` is `42`, not a mapping"):
        resolve("albef/tiny", ["seed.x=1"])


def test_malformed_override():
    with pytest.raises(RecipeError, match="not of the form key.path=value"):
        resolve("albef/tiny", ["encoder.size"])


def test_duplicate_keys_are_an_error(tmp_path):
    path = write(tmp_path, "dup.yaml", "seed: 1\nseed: 2\nencoder: albef\n")
    with pytest.raises(RecipeError, match="duplicate key `seed` \\(first on line 1\\)"):
        resolve(path)


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "evil.yaml", "seed: !!python/object/apply:os.system ['echo hacked']\nencoder: albef\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        resolve(path)


def test_string_shorthand_for_components():
    recipe = load_recipe("albef/tiny", ["encoder=albef"])
    assert recipe.encoder.type == "albef" and recipe.encoder.size == "base"


def test_unknown_recipe_suggests_shipped_names():
    with pytest.raises(RecipeError, match="did you mean `albef/tiny`"):
        find_recipe("albef/tinny")


def test_shipped_recipes_all_resolve_and_describe_themselves():
    rows = dict(list_recipes())
    for name in ("albef/base", "albef/tiny", "albef/tiny_grounded", "albef/tiny_real", "vlmo/base", "vlmo/tiny",
                 "dual/base", "dual/tiny"):
        assert name in rows and rows[name] != "(no description)"
    for name in rows:
        resolve(name)


def test_plugin_objective_from_a_recipe_import(tmp_path, monkeypatch):
    """A user module registers an objective with vlkit.register; a recipe imports it and configures it."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    path = write(tmp_path, "plugin.yaml", "base: " + str(find_recipe("albef/tiny")) + "\n"
                 "imports: [vlkit_toy_plugin]\n"
                 "objectives:\n  hinge: {type: toy_margin, weight: 0.5, margin: 0.3}\n")
    try:
        recipe = load_recipe(path)
        cfg = recipe.objectives["hinge"]
        assert (cfg.type, cfg.weight, cfg.margin, cfg.squared) == ("toy_margin", 0.5, 0.3, False)
        objective = registry.get("objective", cfg.type).target(cfg, name="hinge")
        feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
        out = objective({"image_feat": feats, "text_feat": feats})
        assert out.loss.item() == pytest.approx(0.0)  # identical features: similarity 1 > margin
        out = objective({"image_feat": feats, "text_feat": -feats})
        assert out.loss.item() == pytest.approx(1.3)

        with pytest.raises(RecipeError, match="unknown key `objectives.hinge.margn`; did you mean `margin`"):
            load_recipe(path, ["objectives.hinge.margn=1"])
        assert "hinge" not in load_recipe(path, ["objectives.hinge=null"]).objectives
    finally:
        registry.unregister("objective", "toy_margin")


def test_missing_plugin_module_is_a_recipe_error(tmp_path):
    path = write(tmp_path, "r.yaml", "imports: [no_such_vlkit_plugin]\nencoder: albef\n")
    with pytest.raises(RecipeError, match="cannot import plug-in module `no_such_vlkit_plugin`"):
        resolve(path)


def test_configs_from_dict_apply_presets_like_recipes():
    from vlkit.encoders.albef import AlbefConfig

    cfg = AlbefConfig.from_dict({"size": "tiny", "embed_dim": 16})
    assert cfg.image.dim == 64 and cfg.embed_dim == 16 and cfg.fusion_layer == 2
    with pytest.raises(RecipeError, match="unknown key `imag`"):
        AlbefConfig.from_dict({"imag": {}})


def test_changing_a_components_type_drops_the_inherited_settings(tmp_path, caplog):
    """Settings of one registered part mean nothing to another: a child (or an override) that changes
    `type` replaces the inherited mapping instead of merging into it; an override says what it dropped."""
    write(tmp_path, "base.yaml", "encoder: {type: albef, size: tiny, fusion_layer: 3}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nencoder: {type: mome, size: tiny}\n")
    assert load_recipe(child).encoder.type == "mome"
    with caplog.at_level("WARNING", logger="vlkit.recipe"):
        recipe = load_recipe(tmp_path / "base.yaml", ["encoder.type=dual", "encoder.size=tiny"])
    assert "`encoder` changes from albef to dual, which drops its other settings (fusion_layer, size)" in caplog.text
    assert recipe.encoder.type == "dual" and recipe.encoder.size == "tiny"
    merged = load_recipe(tmp_path / "base.yaml", ["encoder.type=albef", "encoder.embed_dim=8"])
    assert merged.encoder.fusion_layer == 3  # same type: settings merge as usual
