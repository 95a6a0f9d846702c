"""`vlkit convert`: official ALBEF (pre-train, retrieval, VQA, NLVR2) and VLMo checkpoints, generated at
tiny size from the key tables of the reference (spec §7) with random values, convert with every key
accounted for, load into the vlkit model of the tiny recipes, and convert back bit for bit."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from vlkit.cli import main
from vlkit.convert import ConversionError, UnsafeCheckpoint, load_official, official_to_vlkit, vlkit_to_official
from vlkit.convert.target import build_model
from vlkit.recipe import resolve
from vlkit.weights import release as weights_file
from vlkit.weights.init_from import initialize_from

torch.set_num_threads(1)

ALBEF_PATCH = ["encoder.image.stem=patch"]  # official towers embed patches linearly (tiny recipes: conv stem)
VLMO_PATCH = ["encoder.stem=patch"]


class Gen:
    """Random tensors of the official shapes."""

    def __init__(self, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.g)

    def linear(self, sd: dict[str, Tensor], prefix: str, d_in: int, d_out: int, bias: bool = True) -> None:
        sd[f"{prefix}.weight"] = self(d_out, d_in)
        if bias:
            sd[f"{prefix}.bias"] = self(d_out)

    def norm(self, sd: dict[str, Tensor], prefix: str, d: int) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = 1 + 0.1 * self(d), 0.1 * self(d)


# --------------------------------------------------------------------------- ALBEF (spec §7.1)
def albef_dims() -> dict[str, int]:
    enc = resolve("albef/tiny", ALBEF_PATCH).recipe.encoder
    return {"dim": enc.image.dim, "depth": enc.image.depth, "mlp": int(enc.image.dim * enc.image.mlp_ratio),
            "patch": enc.image.patch_size, "grid": enc.image.grid, "text": enc.text.dim, "layers": enc.text.layers,
            "inter": enc.text.intermediate, "fusion": enc.fusion_layer, "vocab": enc.text.vocab_size,
            "positions": enc.text.max_positions, "embed": enc.embed_dim}


def vit(gen: Gen, sd: dict[str, Tensor], p: str, d: dict[str, int]) -> None:
    dim = d["dim"]
    sd[f"{p}.cls_token"], sd[f"{p}.pos_embed"] = gen(1, 1, dim), gen(1, 1 + d["grid"] ** 2, dim)
    sd[f"{p}.patch_embed.proj.weight"], sd[f"{p}.patch_embed.proj.bias"] = gen(dim, 3, d["patch"], d["patch"]), gen(dim)
    for i in range(d["depth"]):
        b = f"{p}.blocks.{i}"
        gen.norm(sd, f"{b}.norm1", dim)
        gen.linear(sd, f"{b}.attn.qkv", dim, 3 * dim)
        gen.linear(sd, f"{b}.attn.proj", dim, dim)
        gen.norm(sd, f"{b}.norm2", dim)
        gen.linear(sd, f"{b}.mlp.fc1", dim, d["mlp"])
        gen.linear(sd, f"{b}.mlp.fc2", d["mlp"], dim)
    gen.norm(sd, f"{p}.norm", dim)


def bert_layer(gen: Gen, sd: dict[str, Tensor], p: str, dim: int, inter: int, cross_width: int | None) -> None:
    for part in ("attention", "crossattention") if cross_width else ("attention",):
        for name in ("query", "key", "value"):
            width = cross_width if part == "crossattention" and name != "query" else dim
            gen.linear(sd, f"{p}.{part}.self.{name}", width, dim)
        gen.linear(sd, f"{p}.{part}.output.dense", dim, dim)
        gen.norm(sd, f"{p}.{part}.output.LayerNorm", dim)
    gen.linear(sd, f"{p}.intermediate.dense", dim, inter)
    gen.linear(sd, f"{p}.output.dense", inter, dim)
    gen.norm(sd, f"{p}.output.LayerNorm", dim)


def bert_embeddings(gen: Gen, sd: dict[str, Tensor], p: str, d: dict[str, int]) -> None:
    sd[f"{p}.position_ids"] = torch.arange(d["positions"]).unsqueeze(0)
    sd[f"{p}.word_embeddings.weight"] = gen(d["vocab"], d["text"])
    sd[f"{p}.position_embeddings.weight"] = gen(d["positions"], d["text"])
    sd[f"{p}.token_type_embeddings.weight"] = gen(2, d["text"])
    gen.norm(sd, f"{p}.LayerNorm", d["text"])


def mlm_head(gen: Gen, sd: dict[str, Tensor], p: str, words: Tensor, d: dict[str, int]) -> None:
    sd[f"{p}.predictions.bias"] = gen(d["vocab"])
    gen.linear(sd, f"{p}.predictions.transform.dense", d["text"], d["text"])
    gen.norm(sd, f"{p}.predictions.transform.LayerNorm", d["text"])
    sd[f"{p}.predictions.decoder.weight"] = words  # tied (HF tie_weights)
    sd[f"{p}.predictions.decoder.bias"] = sd[f"{p}.predictions.bias"]  # aliased


def albef_state(layout: str, seed: int = 0) -> dict[str, Tensor]:
    """An official ALBEF state dict of ``layout`` at the tiny recipe's dimensions."""
    gen, d, sd = Gen(seed), albef_dims(), {}
    dim, fusion, layers = d["text"], d["fusion"], d["layers"]
    momentum = layout != "nlvr2"  # the NLVR2 text-assignment checkpoint has no momentum model
    for m in ("", "_m") if momentum else ("",):
        vit(gen, sd, f"visual_encoder{m}", d)
        if layout != "vqa":
            gen.linear(sd, f"vision_proj{m}", d["dim"], d["embed"])
            gen.linear(sd, f"text_proj{m}", dim, d["embed"])
        text = f"text_encoder{m}.bert" if layout == "pretrain" else f"text_encoder{m}"
        bert_embeddings(gen, sd, f"{text}.embeddings", d)
        order = list(range(fusion)) + [fusion + j for j in range(2 * (layers - fusion))] if layout == "nlvr2" \
            else list(range(layers))
        for i in order:
            bert_layer(gen, sd, f"{text}.encoder.layer.{i}", dim, d["inter"], d["dim"] if i >= fusion else None)
        if layout == "nlvr2":  # each fusion layer twice; the pair shares cross-attention key/value
            for j in range(layers - fusion):
                a, b = f"{text}.encoder.layer.{fusion + 2 * j}", f"{text}.encoder.layer.{fusion + 2 * j + 1}"
                for name in ("key", "value"):
                    for t in ("weight", "bias"):
                        sd[f"{b}.crossattention.self.{name}.{t}"] = sd[f"{a}.crossattention.self.{name}.{t}"]
        if layout == "pretrain":
            mlm_head(gen, sd, f"text_encoder{m}.cls", sd[f"{text}.embeddings.word_embeddings.weight"], d)
        if layout == "vqa":
            dec = f"text_decoder{m}"
            bert_embeddings(gen, sd, f"{dec}.bert.embeddings", d)
            for i in range(layers - fusion):
                bert_layer(gen, sd, f"{dec}.bert.encoder.layer.{i}", dim, d["inter"], dim)
            mlm_head(gen, sd, f"{dec}.cls", sd[f"{dec}.bert.embeddings.word_embeddings.weight"], d)
    if layout in ("pretrain", "retrieval"):
        gen.linear(sd, "itm_head", dim, 2)
        queue = resolve("albef/tiny").recipe.objectives["itc"].queue_size
        sd["image_queue"], sd["text_queue"] = gen(d["embed"], queue), gen(d["embed"], queue)
        sd["queue_ptr"] = torch.tensor([queue // 2])
    if layout in ("pretrain", "retrieval", "nlvr2"):
        sd["temp"] = torch.tensor(0.05)
    if layout == "retrieval":
        sd["idx_queue"] = torch.randint(0, 1000, (1, sd["image_queue"].shape[1]), generator=gen.g)
    if layout == "nlvr2":
        gen.linear(sd, "ta_head", dim, 3)
    return sd


ALBEF_RECIPES = {"pretrain": "albef/tiny", "retrieval": "finetune/albef/retrieval_tiny",
                 "vqa": "finetune/albef/vqa_tiny", "nlvr2": "finetune/albef/nlvr2_tiny"}


def save(tmp_path: Path, obj: object, name: str) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def accounted_once(acc, source: dict[str, Tensor]) -> None:
    """Every source key is mapped, transformed or dropped exactly once, each drop with a reason."""
    seen = [k for k, _ in acc.mapped] + [k for k, *_ in acc.transformed] + [k for k, _ in acc.dropped]
    assert sorted(seen) == sorted(source)
    assert all(reason for _, reason in acc.dropped) and all(how for _, how in acc.filled)


def load_converted(recipe: str, overrides: list[str], out: Path) -> tuple[nn.Module, dict[str, Tensor]]:
    """The tiny recipe's model initialized from the converted folder by ``init_from``'s loader."""
    model = build_model(resolve(recipe, overrides).recipe, "cpu")
    report = initialize_from(model, out)
    assert not report.new and not report.reshaped and not report.unused, report.summary()
    return model, model.state_dict()


@pytest.mark.parametrize("layout", ["pretrain", "retrieval", "vqa", "nlvr2"])
def test_albef_layouts_convert_load_and_round_trip(tmp_path: Path, layout: str) -> None:
    source = albef_state(layout)
    path = save(tmp_path, {"model": source, "epoch": 29, "config": {"queue_size": 65536}}, f"{layout}.pth")
    recipe = ALBEF_RECIPES[layout]
    done = official_to_vlkit("albef", path, tmp_path / "vlkit", recipe=recipe, overrides=ALBEF_PATCH)
    acc = done.accounting
    assert acc.layout == layout  # detected from the keys
    accounted_once(acc, source)
    assert (tmp_path / "vlkit" / "conversion.md").is_file() and (tmp_path / "vlkit" / "conversion.json").is_file()
    _, state = load_converted(recipe, ALBEF_PATCH, tmp_path / "vlkit")
    for official, vkey in acc.mapped:
        assert torch.equal(state[vkey], source[official].to(state[vkey].dtype)), (official, vkey)

    back = vlkit_to_official("albef", tmp_path / "vlkit", tmp_path / "official")
    official = torch.load(back.path, weights_only=True)["model"]
    dropped = {k for k, _ in acc.dropped}
    for key, value in source.items():
        if key in dropped and key not in official:
            # the text-assignment head, and `temp` (vlkit's NLVR2 recipe trains no contrastive objective)
            assert layout == "nlvr2" and (key.startswith("ta_head.") or key == "temp"), key
            continue
        assert torch.equal(official[key], value) and official[key].dtype == value.dtype, key

    released = weights_file.load_weights(tmp_path / "vlkit" / "model.safetensors")  # the same weights, no pickle
    assert released["converted_from"]["layout"] == layout
    assert released["recipe"] == (tmp_path / "vlkit" / "recipe.yaml").read_text()
    weights = released["model"]
    assert sorted(weights) == sorted(state) and all(torch.equal(weights[k], state[k]) for k in state)
    again = vlkit_to_official("albef", tmp_path / "vlkit" / "model.safetensors", tmp_path / "official_st")
    assert again.path.name == back.path.name
    assert all(torch.equal(v, official[k]) for k, v in torch.load(again.path, weights_only=True)["model"].items())


def test_albef_pretrain_mapping_details(tmp_path: Path) -> None:
    source = albef_state("pretrain")
    path = save(tmp_path, {"model": source}, "ALBEF_4M.pth")
    acc = official_to_vlkit("albef", path, tmp_path / "out", recipe="albef/tiny", overrides=ALBEF_PATCH).accounting
    pairs = dict(acc.mapped)
    assert pairs["temp"] == "objectives.itc.temp.value"
    assert pairs["queue_ptr"] == "objectives.itc.queue.queue_ptr"
    assert pairs["visual_encoder_m.norm.weight"] == "teacher.copies.encoder.visual_encoder.norm.weight"
    assert pairs["text_encoder_m.bert.encoder.layer.3.crossattention.self.key.weight"] == \
        "teacher.copies.encoder.text_encoder.encoder.layer.3.crossattention.self.key.weight"
    assert pairs["text_encoder_m.cls.predictions.bias"] == "teacher.copies.mlm__head.predictions.bias"
    assert pairs["vision_proj_m.weight"] == "teacher.copies.encoder.vision_proj.weight"
    assert pairs["itm_head.weight"] == "objectives.itm.head.fc.weight"
    assert dict(acc.filled)["objectives.itc.queue.idx_queue"].startswith("no counterpart")
    model, state = load_converted("albef/tiny", ALBEF_PATCH, tmp_path / "out")
    assert model.objectives["mlm"].head.predictions.decoder.weight is model.encoder.word_embeddings().weight
    assert torch.equal(state["objectives.mlm.head.predictions.decoder.weight"],
                       source["text_encoder.bert.embeddings.word_embeddings.weight"])


def test_albef_pretrain_into_vqa_recipe_uses_init_aliases(tmp_path: Path) -> None:
    """ALBEF_4M.pth straight into the VQA recipe: the answer decoder starts from the fusion layers, the
    embeddings and the MLM head, as ALBEF's VQA.py does (and vlkit's init_from)."""
    source = albef_state("pretrain")
    path = save(tmp_path, {"model": source}, "ALBEF_4M.pth")
    done = official_to_vlkit("albef", path, tmp_path / "out", recipe=ALBEF_RECIPES["vqa"], overrides=ALBEF_PATCH)
    accounted_once(done.accounting, source)
    fusion = albef_dims()["fusion"]
    assert torch.equal(done.state["objectives.vqa.head.encoder.layer.0.crossattention.self.key.weight"],
                       source[f"text_encoder.bert.encoder.layer.{fusion}.crossattention.self.key.weight"])
    assert torch.equal(done.state["objectives.vqa.head.cls.predictions.bias"],
                       source["text_encoder.cls.predictions.bias"])


def test_albef_vision_tower_matches_timm(tmp_path: Path) -> None:
    """A timm ViT saved as ALBEF's visual encoder gives the same image tokens in vlkit after conversion."""
    from timm.models.vision_transformer import VisionTransformer

    d = albef_dims()
    tower = VisionTransformer(img_size=d["grid"] * d["patch"], patch_size=d["patch"], embed_dim=d["dim"],
                              depth=d["depth"], num_heads=4, mlp_ratio=d["mlp"] / d["dim"], qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0, global_pool="").eval()
    source = albef_state("pretrain")
    for prefix in ("visual_encoder.", "visual_encoder_m."):
        sd = {prefix + k: v.clone() for k, v in tower.state_dict().items()}
        assert set(sd) == {k for k in source if k.startswith(prefix)}
        source.update(sd)
    path = save(tmp_path, {"model": source}, "ALBEF.pth")
    official_to_vlkit("albef", path, tmp_path / "out", recipe="albef/tiny", overrides=ALBEF_PATCH)
    model, _ = load_converted("albef/tiny", ALBEF_PATCH, tmp_path / "out")
    images = torch.randn(2, 3, d["grid"] * d["patch"], d["grid"] * d["patch"])
    with torch.no_grad():
        ours = model.encoder.eval().encode_image(images).embeds
        theirs = tower.forward_features(images)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_albef_pos_embed_interpolated_for_another_resolution(tmp_path: Path) -> None:
    source = albef_state("pretrain")
    path = save(tmp_path, {"model": source}, "ALBEF.pth")
    grid = albef_dims()["grid"]
    done = official_to_vlkit("albef", path, tmp_path / "out", recipe="albef/tiny",
                             overrides=[*ALBEF_PATCH, f"encoder.image.image_size={12 * 8}"])
    pos = done.state["encoder.visual_encoder.pos_embed"]
    assert pos.shape == (1, 1 + 144, source["visual_encoder.pos_embed"].shape[-1])
    assert torch.equal(pos[:, 0], source["visual_encoder.pos_embed"][:, 0])  # [CLS] kept
    how = {a: h for a, _, h in done.accounting.transformed}
    assert f"{grid}×{grid} → 12×12" in how["visual_encoder_m.pos_embed"]


def test_albef_errors_name_the_key(tmp_path: Path) -> None:
    source = albef_state("retrieval")
    recipe = ALBEF_RECIPES["retrieval"]

    def convert(sd: dict[str, Tensor], overrides: list[str] = ALBEF_PATCH) -> None:
        official_to_vlkit("albef", save(tmp_path, {"model": sd}, "x.pth"), tmp_path / "out", recipe=recipe,
                          overrides=overrides)

    missing = dict(source)
    del missing["visual_encoder.blocks.1.attn.qkv.bias"]
    with pytest.raises(ConversionError, match=r"`visual_encoder\.blocks\.1\.attn\.qkv\.bias`.*missing"):
        convert(missing)
    wrong = {**source, "text_proj.weight": torch.zeros(7, 64)}
    with pytest.raises(ConversionError, match=r"`text_proj\.weight`.*\(7, 64\) in the checkpoint, \(32, 64\)"):
        convert(wrong)
    with pytest.raises(ConversionError, match=r"`decoder\.extra\.weight`.*not part of the official ALBEF"):
        convert({**source, "decoder.extra.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"patch_embed\.proj\.weight.*stem=patch"):
        convert(source, overrides=[])  # the tiny recipe's convolutional stem
    short = {**source, "image_queue": torch.zeros(32, 64), "text_queue": torch.zeros(32, 64)}
    with pytest.raises(ConversionError, match=r"queue_size=64"):
        convert(short)


def test_unsafe_pickles_are_refused_with_advice(tmp_path: Path) -> None:
    source = albef_state("retrieval")
    path = save(tmp_path, {"model": source, "args": argparse.Namespace(lr=1e-4)}, "nlvr.pth")
    advice = r"(?s)weights_only=True.*argparse\.Namespace.*weights_only=False.*weights\.pt"
    with pytest.raises(UnsafeCheckpoint, match=advice):
        load_official(path)
    resaved = save(tmp_path, {"model": source}, "nlvr.pth.weights.pt")  # what the advised command writes
    state, where = load_official(resaved)
    assert where == "['model']" and set(state) == set(source)


def test_cli_convert_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save(tmp_path, {"model": albef_state("retrieval")}, "mscoco.pth")
    out = tmp_path / "coco"
    recipe = ALBEF_RECIPES["retrieval"]
    code = main(["convert", "albef", str(path), *ALBEF_PATCH, "--recipe", recipe, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "official → vlkit (albef, retrieval layout)" in printed and "position_ids" in printed
    assert main(["convert", "albef", str(out), "--to", "official", "--out", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "albef_retrieval.pth").is_file()
    assert main(["convert", "albef", str(path), "--recipe", "albef/tiny", "--out", str(tmp_path / "bad")]) == 2
    assert "patch_embed.proj.weight" in capsys.readouterr().err


# --------------------------------------------------------------------------- VLMo (spec §7.2)
VLMO_TINY = "vlmo/tiny"


def vlmo_dims(overrides: list[str] = VLMO_PATCH) -> dict[str, int]:
    enc = resolve(VLMO_TINY, overrides).recipe.encoder
    return {"dim": enc.dim, "depth": enc.depth, "heads": enc.heads, "vl_start": enc.vl_start, "grid": enc.grid,
            "patch": enc.patch_size, "span": enc.max_text_len_of_initckpt, "vocab": enc.vocab_size,
            "text_len": enc.max_text_len, "embed": enc.embed_dim, "mlp": int(enc.dim * enc.mlp_ratio)}


def vlmo_state(seed: int = 1) -> dict[str, Tensor]:
    """An official VLMo (base-like, relative positions) state dict at the tiny recipe's dimensions."""
    gen, d, sd = Gen(seed), vlmo_dims(), {}
    dim, w = d["dim"], d["grid"]
    rows = (2 * w - 1) ** 2 + 3 + 2 * d["span"] + 2  # all_num_relative_distance
    sd["relative_position_bias_table"] = gen(rows, d["heads"] * d["depth"])
    sd["transformer.cls_token"] = gen(1, 1, dim)
    sd["transformer.patch_embed.proj.weight"], sd["transformer.patch_embed.proj.bias"] = \
        gen(dim, 3, d["patch"], d["patch"]), gen(dim)
    for i in range(d["depth"]):
        b = f"transformer.blocks.{i}"
        gen.norm(sd, f"{b}.norm1", dim)
        sd[f"{b}.attn.qkv.weight"] = gen(3 * dim, dim)  # no qkv.bias
        sd[f"{b}.attn.q_bias"], sd[f"{b}.attn.v_bias"] = gen(dim), gen(dim)
        gen.linear(sd, f"{b}.attn.proj", dim, dim)
        sd[f"{b}.gamma_1"], sd[f"{b}.gamma_2"] = 0.1 * gen(dim), 0.1 * gen(dim)
        experts = ("text", "imag", "vl") if i >= d["vl_start"] else ("text", "imag")
        for e in experts:
            gen.norm(sd, f"{b}.norm2_{e}", dim)
            gen.linear(sd, f"{b}.mlp_{e}.fc1", dim, d["mlp"])
            gen.linear(sd, f"{b}.mlp_{e}.fc2", d["mlp"], dim)
    gen.norm(sd, "transformer.norm", dim)
    sd["text_embeddings.word_embeddings.weight"] = gen(d["vocab"], dim)
    sd["text_embeddings.position_embeddings.weight"] = gen(d["text_len"], dim)
    sd["text_embeddings.token_type_embeddings.weight"] = gen(2, dim)
    gen.norm(sd, "text_embeddings.LayerNorm", dim)
    sd["text_embeddings.position_ids"] = torch.arange(d["text_len"]).unsqueeze(0)
    sd["token_type_embeddings.weight"] = gen(2, dim)
    gen.linear(sd, "pooler.dense", dim, dim)
    gen.linear(sd, "mlm_score.transform.dense", dim, dim)
    gen.norm(sd, "mlm_score.transform.LayerNorm", dim)
    sd["mlm_score.decoder.weight"], sd["mlm_score.bias"] = gen(d["vocab"], dim), gen(d["vocab"])
    gen.linear(sd, "itm_score.fc", dim, 2)
    for name in ("itc_text_proj", "itc_image_proj", "itc_vl_text_proj", "itc_vl_image_proj"):
        gen.linear(sd, f"{name}.fc", dim, d["embed"], bias=False)
    sd["logit_scale"], sd["logit_vl_scale"] = torch.tensor(2.5), torch.tensor(2.7)
    sd["relative_position_index"] = torch.zeros(1 + w * w, 1 + w * w, dtype=torch.long)
    return sd


def test_vlmo_converts_loads_and_round_trips(tmp_path: Path) -> None:
    source = vlmo_state()
    lightning = {"state_dict": source, "epoch": 3, "pytorch-lightning_version": "1.5.5"}
    done = official_to_vlkit("vlmo", save(tmp_path, lightning, "vlmo.ckpt"), tmp_path / "vlkit", recipe=VLMO_TINY,
                             overrides=VLMO_PATCH)
    acc = done.accounting
    accounted_once(acc, source)
    assert not done.accounting.transformed and not done.accounting.filled
    assert {k for k, _ in acc.dropped} == {"text_embeddings.position_ids", "text_embeddings.position_embeddings.weight",
                                           "relative_position_index"}
    pairs = dict(acc.mapped)
    assert pairs["logit_vl_scale"] == "objectives.itc.vl_temp.value"
    assert pairs["mlm_score.decoder.weight"] == "objectives.mlm.head.predictions.decoder.weight"
    assert pairs["transformer.blocks.3.mlp_vl.fc1.weight"] == "encoder.transformer.blocks.3.mlp_vl.fc1.weight"
    _, state = load_converted(VLMO_TINY, VLMO_PATCH, tmp_path / "vlkit")
    for official, vkey in acc.mapped:
        assert torch.equal(state[vkey], source[official]), (official, vkey)

    back = vlkit_to_official("vlmo", tmp_path / "vlkit", tmp_path / "official")
    official = torch.load(back.path, weights_only=True)["state_dict"]
    kept = set(source) - {k for k, _ in acc.dropped}
    for key in kept:
        assert torch.equal(official[key], source[key]) and official[key].dtype == source[key].dtype, key
    assert torch.equal(official["text_embeddings.position_ids"], source["text_embeddings.position_ids"])
    # every key of the official model, so that its load_state_dict(strict=True) takes the file: the unused
    # text position table included (relative_position_index is a checkpoint-only key, not a module buffer)
    assert set(official) == set(source) - {"relative_position_index"}
    positions = "text_embeddings.position_embeddings.weight"
    assert official[positions].shape == source[positions].shape and official[positions].dtype == source[positions].dtype
    assert positions in dict(back.accounting.filled)


def test_vlmo_deepspeed_module_prefix_and_raw_dict(tmp_path: Path) -> None:
    source = vlmo_state()
    path = save(tmp_path, {"module": {"module." + k: v for k, v in source.items()}}, "mp_rank_00_model_states.pt")
    state, where = load_official(path)
    assert set(state) == set(source) and "module." in where
    official_to_vlkit("vlmo", path, tmp_path / "out", recipe=VLMO_TINY, overrides=VLMO_PATCH)
    raw, where = load_official(save(tmp_path, source, "raw.pt"))
    assert set(raw) == set(source) and where == "the file itself"


def test_vlmo_relative_position_table_by_hand(tmp_path: Path) -> None:
    """The shared table ``[buckets, heads·layers]``: layer ``l`` head ``h`` reads column ``l·H + h`` at
    the bucket of each token pair (spec §3.4), computed here by hand."""
    source = vlmo_state()
    official_to_vlkit("vlmo", save(tmp_path, {"state_dict": source}, "v.ckpt"), tmp_path / "out", recipe=VLMO_TINY,
                      overrides=VLMO_PATCH)
    model, _ = load_converted(VLMO_TINY, VLMO_PATCH, tmp_path / "out")
    d = vlmo_dims()
    w, heads, table = d["grid"], d["heads"], source["relative_position_bias_table"]
    num_rel = (2 * w - 1) ** 2 + 3
    with torch.no_grad():
        image = model.encoder._biases("image", 0, torch.device("cpu"))  # [layers, H, 1+W², 1+W²]
        text = model.encoder._biases("text", 5, torch.device("cpu"))
    for layer, head, (r1, c1), (r2, c2) in [(0, 0, (0, 0), (0, 1)), (2, 3, (3, 5), (7, 0)), (3, 1, (6, 6), (1, 2))]:
        bucket = (r1 - r2 + w - 1) * (2 * w - 1) + (c1 - c2 + w - 1)
        q, k = 1 + r1 * w + c1, 1 + r2 * w + c2
        assert image[layer, head, q, k] == table[bucket, layer * heads + head]
    assert image[1, 2, 0, 5] == table[num_rel - 3, 1 * heads + 2]  # image [CLS] → patch
    assert image[1, 2, 5, 0] == table[num_rel - 2, 1 * heads + 2]  # patch → image [CLS]
    assert image[1, 2, 0, 0] == table[num_rel - 1, 1 * heads + 2]
    i, j = 1, 4  # text tokens past [CLS]: bucket num_rel + 2 + (T - 2) + (j - i)
    assert text[3, 0, i, j] == table[num_rel + 2 + d["span"] - 2 + j - i, 3 * heads]
    assert text[3, 0, 0, 0] == table[table.shape[0] - 1, 3 * heads]


def test_vlmo_table_interpolated_for_another_resolution(tmp_path: Path) -> None:
    source = vlmo_state()
    w, span = vlmo_dims()["grid"], vlmo_dims()["span"]
    image_rows = (2 * w - 1) ** 2
    source["relative_position_bias_table"][:image_rows, 0] = 1.5  # a constant stays constant
    done = official_to_vlkit("vlmo", save(tmp_path, {"state_dict": source}, "v.ckpt"), tmp_path / "out",
                             recipe=VLMO_TINY, overrides=[*VLMO_PATCH, "encoder.image_size=96"])
    table = done.state["encoder.relative_position_bias_table"]
    assert table.shape[0] == 23**2 + 3 + 2 * span + 2
    assert torch.equal(table[23**2:], source["relative_position_bias_table"][image_rows:])
    torch.testing.assert_close(table[: 23**2, 0], torch.full((23**2,), 1.5))
    assert "8×8 → 12×12" in dict((a, h) for a, _, h in done.accounting.transformed)["relative_position_bias_table"]


def test_vlmo_stage2_checkpoint_without_vl_experts_and_heads(tmp_path: Path) -> None:
    """VLMo's text-pretraining checkpoint has no VL experts, ITC/ITM heads or pooler: those are filled
    by vlkit's initialization and reported; a block missing a weight it should have is an error."""
    absent = (".mlp_vl.", ".norm2_vl.", "itc_", "itm_score.", "pooler.", "logit_")
    source = {k: v for k, v in vlmo_state().items() if not any(a in k for a in absent)}
    done = official_to_vlkit("vlmo", save(tmp_path, {"state_dict": source}, "s2.ckpt"), tmp_path / "out",
                             recipe=VLMO_TINY, overrides=VLMO_PATCH)
    filled = dict(done.accounting.filled)
    assert "VL experts" in filled["encoder.transformer.blocks.2.norm2_vl.weight"]
    assert "the checkpoint has no `pooler`" in filled["encoder.pooler.dense.weight"]
    del source["transformer.blocks.0.attn.q_bias"]
    with pytest.raises(ConversionError, match=r"`transformer\.blocks\.0\.attn\.q_bias`.*missing"):
        official_to_vlkit("vlmo", save(tmp_path, {"state_dict": source}, "s2.ckpt"), tmp_path / "out",
                          recipe=VLMO_TINY, overrides=VLMO_PATCH)


def test_vlmo_finetuned_classifiers(tmp_path: Path) -> None:
    d = vlmo_dims()
    gen, dim = Gen(5), d["dim"]
    vqa = vlmo_state()
    gen.linear(vqa, "vqa_classifier.0", dim, 2 * dim)
    gen.norm(vqa, "vqa_classifier.1", 2 * dim)
    gen.linear(vqa, "vqa_classifier.3", 2 * dim, 11)
    done = official_to_vlkit("vlmo", save(tmp_path, {"state_dict": vqa}, "vqa.ckpt"), tmp_path / "vqa",
                             recipe="finetune/vlmo/vqa_tiny", overrides=VLMO_PATCH)
    assert dict(done.accounting.mapped)["vqa_classifier.3.weight"] == "objectives.vqa.head.net.3.weight"
    assert "the recipe has no itm objective" in dict(done.accounting.dropped)["itm_score.fc.weight"]
    back = vlkit_to_official("vlmo", tmp_path / "vqa", tmp_path / "vqa_back")
    assert torch.equal(back.state["vqa_classifier.3.bias"], vqa["vqa_classifier.3.bias"])

    nlvr2 = vlmo_state()
    nlvr2["token_type_embeddings.weight"] = gen(3, dim)
    gen.linear(nlvr2, "nlvr2_classifier.0", 2 * dim, 2 * dim)
    gen.norm(nlvr2, "nlvr2_classifier.1", 2 * dim)
    gen.linear(nlvr2, "nlvr2_classifier.3", 2 * dim, 2)
    path = save(tmp_path, {"state_dict": nlvr2}, "nlvr2.ckpt")
    with pytest.raises(ConversionError, match=r"token_type_embeddings has 3 rows.*type_vocab_size=3"):
        official_to_vlkit("vlmo", path, tmp_path / "nlvr2", recipe="finetune/vlmo/nlvr2_tiny", overrides=VLMO_PATCH)
    done = official_to_vlkit("vlmo", path, tmp_path / "nlvr2", recipe="finetune/vlmo/nlvr2_tiny",
                             overrides=[*VLMO_PATCH, "encoder.type_vocab_size=3"])
    accounted_once(done.accounting, nlvr2)
    assert torch.equal(done.state["objectives.nlvr2.head.net.0.weight"], nlvr2["nlvr2_classifier.0.weight"])
