"""MoME (VLMo) encoder: parity with a reference of VLMo's official forward, routing, relative positions.

The reference below re-implements VLMo's ``infer`` / ``infer_text`` / ``infer_image`` from its
description (fused sequences split at a constant ``max_text_len``, attention logits in fp32 with
``masked_fill(-inf)``, index matrices built entry by entry) and reads weights from a copy of the
vlkit state dict, which also checks the state-dict names. fp32 on the CPU throughout.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vlkit.build import parameter_report
from vlkit.encoders.mome import MomeConfig, MomeEncoder, build_mome
from vlkit.nn.multiway import MultiwayBlock, modality_ids
from vlkit.nn.relative_position import (
    fused_relative_position_index,
    image_relative_position_index,
    num_buckets,
    num_image_buckets,
    text_relative_position_index,
)
from vlkit.nn.self_attention import SelfAttention, set_attention_backend
from vlkit.schema import ConfigError, validate_component

TOL = {"atol": 1e-5, "rtol": 1e-5}
LENGTHS = (9, 23, 5, 14)  # real tokens per caption; the batch's longest is 23 < max_text_len = 40


def tiny(**overrides: object) -> MomeConfig:
    return MomeConfig(size="tiny", **{"attention": "math", **MomeConfig.SIZES["tiny"], **overrides})


def randomized(cfg: MomeConfig, seed: int = 0) -> MomeEncoder:
    """An encoder whose zero / constant initial values (bias table, q/v biases, layer scales) are
    replaced by random ones, so that no term vanishes in the comparisons."""
    torch.manual_seed(seed)
    enc = build_mome(cfg).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name == "relative_position_bias_table":
                p.normal_(0.0, 1.0)
            elif ".gamma_" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    return enc


def batch(pad_to: int, lengths: tuple[int, ...] = LENGTHS, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Images ``[B, 3, 32, 32]``, ids and mask ``[B, pad_to]`` (the same captions for any ``pad_to``)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(lengths), 3, 32, 32, generator=g)
    words = torch.randint(1000, 2000, (len(lengths), 64), generator=g)
    mask = (torch.arange(pad_to)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.where(mask.bool(), words[:, :pad_to], 0)
    ids[:, 0] = 101
    return images, ids, mask


# --------------------------------------------------------------------------- reference (VLMo's forward)
def official_index(text_len: int | None, grid: int, span: int = 196) -> Tensor:
    """VLMo's index matrices entry by entry: image only (``text_len`` None) or ``[text, image]``."""
    nr = (2 * grid - 1) ** 2 + 3
    total = nr + 2 * span + 2
    m = 1 + grid * grid
    image = torch.zeros(m, m, dtype=torch.long)
    for a in range(1, m):
        for b in range(1, m):
            (ha, wa), (hb, wb) = divmod(a - 1, grid), divmod(b - 1, grid)
            image[a, b] = (ha - hb + grid - 1) * (2 * grid - 1) + (wa - wb + grid - 1)
    image[0, :], image[:, 0], image[0, 0] = nr - 3, nr - 2, nr - 1
    if text_len is None:
        return image
    text = torch.zeros(text_len, text_len, dtype=torch.long)
    for i in range(1, text_len):
        for j in range(1, text_len):
            text[i, j] = nr + 2 + (span - 2) + (j - i)
    text[0, :], text[:, 0], text[0, 0] = total - 3, total - 2, total - 1
    top = torch.cat((text, torch.full((text_len, m), nr)), 1)
    return torch.cat((top, torch.cat((torch.full((m, text_len), nr + 1), image), 1)), 0)


def ref_block(sd: dict[str, Tensor], i: int, x: Tensor, mask: Tensor, modality: str, bias: Tensor | None,
              cfg: MomeConfig) -> Tensor:
    pre = f"transformer.blocks.{i}."
    g1, g2 = sd.get(pre + "gamma_1", 1.0), sd.get(pre + "gamma_2", 1.0)

    def ln(name: str, y: Tensor) -> Tensor:
        return F.layer_norm(y, (y.shape[-1],), sd[pre + name + ".weight"], sd[pre + name + ".bias"], 1e-6)

    def ffn(name: str, y: Tensor) -> Tensor:
        p = pre + f"mlp_{name}."
        h = F.gelu(F.linear(ln(f"norm2_{name}", y), sd[p + "fc1.weight"], sd[p + "fc1.bias"]))
        return y + g2 * F.linear(h, sd[p + "fc2.weight"], sd[p + "fc2.bias"])

    b, n, c = x.shape
    a = pre + "attn."
    qkv_bias = torch.cat((sd[a + "q_bias"], torch.zeros_like(sd[a + "v_bias"]), sd[a + "v_bias"]))
    qkv = F.linear(ln("norm1", x), sd[a + "qkv.weight"], qkv_bias)
    qkv = qkv.reshape(b, n, 3, cfg.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // cfg.heads) ** -0.5, qkv[1], qkv[2]
    logits = q.float() @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.unsqueeze(0)
    logits = logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    out = (logits.softmax(dim=-1).type_as(x) @ v).transpose(1, 2).reshape(b, n, c)
    x = x + g1 * F.linear(out, sd[a + "proj.weight"], sd[a + "proj.bias"])
    if modality in ("text", "imag"):
        return ffn(modality, x)
    if pre + "mlp_vl.fc1.weight" not in sd:  # split at the constant max_text_len, as VLMo does
        t = cfg.max_text_len
        return torch.cat((ffn("text", x[:, :t]), ffn("imag", x[:, t:])), 1)
    return ffn("vl", x)


def ref_biases(sd: dict[str, Tensor], index: Tensor | None, cfg: MomeConfig) -> list[Tensor | None]:
    if "relative_position_bias_table" not in sd or index is None:
        return [None] * cfg.depth
    return list(F.embedding(index, sd["relative_position_bias_table"]).permute(2, 0, 1).chunk(cfg.depth, 0))


def ref_norm(sd: dict[str, Tensor], x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd["transformer.norm.weight"], sd["transformer.norm.bias"], 1e-6)


def ref_embed(sd: dict[str, Tensor], cfg: MomeConfig, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Image and text tokens with the outer token types (1 and 0) added."""
    img = F.conv2d(images, sd["transformer.patch_embed.proj.weight"], sd["transformer.patch_embed.proj.bias"],
                   stride=cfg.patch_size).flatten(2).transpose(1, 2)
    img = torch.cat((sd["transformer.cls_token"].expand(img.shape[0], -1, -1), img), 1)
    txt = sd["text_embeddings.word_embeddings.weight"][ids] + sd["text_embeddings.token_type_embeddings.weight"][0]
    if cfg.position == "absolute":
        img = img + sd["transformer.pos_embed"]
        txt = txt + sd["text_embeddings.position_embeddings.weight"][: ids.shape[1]]
    txt = F.layer_norm(txt, (cfg.dim,), sd["text_embeddings.LayerNorm.weight"], sd["text_embeddings.LayerNorm.bias"],
                       1e-12)
    types = sd["token_type_embeddings.weight"]
    return img + types[1], txt + types[0]


def ref_fused(sd: dict[str, Tensor], cfg: MomeConfig, images: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """VLMo's ``infer``: text must be padded to ``max_text_len``."""
    assert ids.shape[1] == cfg.max_text_len
    img, txt = ref_embed(sd, cfg, images, ids)
    x, m = torch.cat((txt, img), 1), torch.cat((mask, torch.ones(img.shape[:2], dtype=mask.dtype)), 1)
    for i, bias in enumerate(ref_biases(sd, official_index(ids.shape[1], cfg.grid), cfg)):
        x = ref_block(sd, i, x, m, "vl", bias, cfg)
    x = ref_norm(sd, x)
    cls = torch.tanh(F.linear(x[:, 0], sd["pooler.dense.weight"], sd["pooler.dense.bias"]))
    return x[:, : ids.shape[1]], x[:, ids.shape[1]:], cls


def ref_unimodal(sd: dict[str, Tensor], cfg: MomeConfig, x: Tensor, mask: Tensor, modality: str,
                 index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """VLMo's ``infer_text`` / ``infer_image``: hidden state, feat and vl_feat."""
    biases, hidden = ref_biases(sd, index, cfg), []
    for i in range(cfg.depth):
        x = ref_block(sd, i, x, mask, modality, biases[i], cfg)
        hidden.append(x)
    vl = hidden[cfg.vl_start - 1]
    for i in range(cfg.vl_start, cfg.depth):
        vl = ref_block(sd, i, vl, mask, "vl", biases[i], cfg)
    name = "text" if modality == "text" else "image"
    out, vl = ref_norm(sd, x), ref_norm(sd, vl)
    feat = F.normalize(out[:, 0] @ sd[f"itc_{name}_proj.fc.weight"].T, dim=-1)
    return out, feat, F.normalize(vl[:, 0] @ sd[f"itc_vl_{name}_proj.fc.weight"].T, dim=-1)


def state(enc: MomeEncoder) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


# --------------------------------------------------------------------------- (a) official parity
@pytest.mark.parametrize("overrides", [{}, {"position": "absolute", "layer_scale": None}, {"vl_start": 4}],
                         ids=["relative", "absolute-no-layer-scale", "no-vl-experts"])
def test_fused_matches_official_forward(overrides: dict) -> None:
    cfg = tiny(**overrides)
    enc = randomized(cfg)
    images, ids, mask = batch(pad_to=cfg.max_text_len)
    with torch.no_grad():
        fused = enc.fuse(enc.encode_image(images), enc.encode_text(ids, mask, unimodal=False))
        text, image, cls = ref_fused(state(enc), cfg, images, ids, mask)
    torch.testing.assert_close(fused.text, text, **TOL)
    torch.testing.assert_close(fused.image, image, **TOL)
    torch.testing.assert_close(fused.cls, cls, **TOL)


# --------------------------------------------------------------------------- (b) no fixed padding
def test_batch_padding_gives_the_same_outputs_as_max_text_len() -> None:
    enc = randomized(tiny())
    images, ids40, mask40 = batch(pad_to=40)
    _, ids, mask = batch(pad_to=max(LENGTHS))
    real = mask.bool()
    with torch.no_grad():
        image = enc.encode_image(images)
        short, full = enc.encode_text(ids, mask), enc.encode_text(ids40, mask40)
        fused_short, fused_full = enc.fuse(image, short), enc.fuse(image, full)
    torch.testing.assert_close(fused_short.text[real], fused_full.text[:, : ids.shape[1]][real], **TOL)
    torch.testing.assert_close(fused_short.image, fused_full.image, **TOL)
    torch.testing.assert_close(fused_short.cls, fused_full.cls, **TOL)
    torch.testing.assert_close(short.embeds[real], full.embeds[:, : ids.shape[1]][real], **TOL)
    torch.testing.assert_close(short.feat, full.feat, **TOL)
    torch.testing.assert_close(short.vl_feat, full.vl_feat, **TOL)


# --------------------------------------------------------------------------- (c) relative index
def test_relative_index_values_at_224() -> None:
    grid, nr, total = 14, 732, 1126  # 224 px / patch 16
    assert num_image_buckets(grid) == nr and num_buckets(grid) == total
    assert num_buckets(384 // 16) == 2606 and num_buckets(480 // 16) == 3878
    image = image_relative_position_index(grid)
    assert image.shape == (197, 197) and image.dtype == torch.long
    assert (image[0, 5], image[5, 0], image[0, 0]) == (nr - 3, nr - 2, nr - 1)
    # token 1 is patch (0, 0), token 32 is patch (2, 3): (0-2+13)*27 + (0-3+13), and the reverse
    assert (image[1, 32], image[32, 1], image[7, 7]) == (11 * 27 + 10, 15 * 27 + 16, 13 * 27 + 13)
    text = text_relative_position_index(40, grid)
    assert (text[0, 5], text[5, 0], text[0, 0]) == (total - 3, total - 2, total - 1)
    assert (text[3, 7], text[7, 3], text[1, 1]) == (nr + 2 + 194 + 4, nr + 2 + 194 - 4, nr + 2 + 194)
    fused = fused_relative_position_index(40, grid)
    assert fused.shape == (237, 237)
    assert (fused[:40, 40:] == nr).all() and (fused[40:, :40] == nr + 1).all()
    assert torch.equal(fused[40:, 40:], image) and torch.equal(fused[:40, :40], text)
    assert torch.equal(fused, official_index(40, grid))
    assert int(fused.min()) >= 0 and int(fused.max()) < total


def test_short_text_index_is_a_sub_block_of_the_max_text_len_index() -> None:
    full, short = fused_relative_position_index(40, 4), fused_relative_position_index(12, 4)
    keep = torch.cat((torch.arange(12), torch.arange(40, 40 + 17)))
    assert torch.equal(short, full[keep][:, keep])
    with pytest.raises(ValueError, match="max_text_len_of_initckpt"):
        text_relative_position_index(197, 14)


# --------------------------------------------------------------------------- (d) routing
@pytest.mark.parametrize("pad_to", [40, 11])
def test_unimodal_paths_match_official(pad_to: int) -> None:
    cfg = tiny()
    enc = randomized(cfg)
    images, ids, mask = batch(pad_to=pad_to, lengths=(9, 11, 5, 7))
    sd = state(enc)
    img, txt = ref_embed(sd, cfg, images, ids)
    with torch.no_grad():
        image, text = enc.encode_image(images), enc.encode_text(ids, mask)
        ref_image = ref_unimodal(sd, cfg, img, torch.ones(img.shape[:2]), "imag", official_index(None, cfg.grid))
        ref_text = ref_unimodal(sd, cfg, txt, mask, "text", official_index(pad_to, cfg.grid)[:pad_to, :pad_to])
    for got, want in zip((image.embeds, image.feat, image.vl_feat), ref_image, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    for got, want in zip((text.embeds, text.feat, text.vl_feat), ref_text, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(image.feat, image.vl_feat, atol=1e-3)
    assert not torch.allclose(text.feat, text.vl_feat, atol=1e-3)
    assert image.embeds.shape == image.inputs.shape == (4, 17, 64) and text.inputs.shape == (4, pad_to, 64)


def test_experts_only_see_their_modality() -> None:
    enc = randomized(tiny())
    images, ids, mask = batch(pad_to=23)
    with torch.no_grad():
        before = (enc.encode_image(images), enc.encode_text(ids, mask))
        enc.transformer.blocks[0].mlp_imag.fc2.bias.add_(1.0)
        image, text = enc.encode_image(images), enc.encode_text(ids, mask)
    assert torch.equal(text.embeds, before[1].embeds) and torch.equal(text.vl_feat, before[1].vl_feat)
    assert not torch.allclose(image.embeds, before[0].embeds)
    with torch.no_grad():
        enc.transformer.blocks[-1].mlp_vl.fc2.bias.add_(1.0)
        after = enc.encode_image(images)
    assert torch.equal(after.embeds, image.embeds) and torch.equal(after.feat, image.feat)
    assert not torch.allclose(after.vl_feat, image.vl_feat)


def test_without_vl_experts_there_is_no_vl_path() -> None:
    enc = randomized(tiny(vl_start=4))
    assert all(b.mlp_vl is None and b.norm2_vl is None for b in enc.transformer.blocks)
    assert not any("_vl" in k for k in enc.state_dict())
    images, ids, mask = batch(pad_to=23)
    with torch.no_grad():
        assert enc.encode_image(images).vl_feat is None and enc.encode_text(ids, mask).vl_feat is None
    routes = [b.fusion_routes(5, 17) for b in randomized(tiny(vl_start=0)).transformer.blocks]
    assert routes == [[("vl", 22)]] * 4
    assert [b.fusion_routes(5, 17) for b in enc.transformer.blocks] == [[("text", 5), ("image", 17)]] * 4


def test_block_routes_segments_to_experts() -> None:
    torch.manual_seed(0)
    block = MultiwayBlock(32, 4, vl_expert=False, layer_scale=0.5, backend="math").eval()
    x = torch.randn(2, 9, 32)
    out = block(x, [("text", 4), ("image", 5)])
    h = x + block.gamma_1 * block.attn(block.norm1(x))
    want = torch.cat((h[:, :4] + block.gamma_2 * block.mlp_text(block.norm2_text(h[:, :4])),
                      h[:, 4:] + block.gamma_2 * block.mlp_imag(block.norm2_imag(h[:, 4:]))), 1)
    torch.testing.assert_close(out, want, **TOL)
    with pytest.raises(ValueError, match="do not cover"):
        block(x, [("text", 4)])
    with pytest.raises(ValueError, match="no vl expert"):
        block(x, [("vl", 9)])
    assert modality_ids([("text", 2), ("image", 3)]).tolist() == [0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- (e) backends
def test_sdpa_matches_math_forward_and_table_gradient() -> None:
    math_enc = randomized(tiny())
    sdpa_enc = copy.deepcopy(math_enc)
    set_attention_backend(sdpa_enc, "sdpa")
    images, ids, mask = batch(pad_to=23)
    outs, grads = [], []
    for enc in (math_enc, sdpa_enc):
        image, text = enc.encode_image(images), enc.encode_text(ids, mask)
        fused = enc.fuse(image, text)
        out = (image.embeds, image.feat, image.vl_feat, text.embeds, text.feat, text.vl_feat, fused.text, fused.cls)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)
        loss.backward()
        outs.append(out)
        grads.append(enc.relative_position_bias_table.grad)
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_config_attention_reaches_every_attention_layer() -> None:
    enc = build_mome(tiny(attention="sdpa"))
    layers = [m for m in enc.modules() if isinstance(m, SelfAttention)]
    assert len(layers) == 4 and all(m.attention_backend == "sdpa" for m in layers)


# --------------------------------------------------------------------------- (f) sizes
# VLMo's README lists 175M (base), 562M (large) and 167M (base_plus). Those match the encoder
# WITHOUT the pooler and the four ITC projections (5 × D² + D); totals with them are 178.35M,
# 566.75M and 168.05M. The MLM head is no part of the encoder (its untied decoder alone is
# 30522 × D ≈ 23.4M at base); counting it would overshoot the README by ~26M.
@pytest.mark.parametrize(("size", "total", "readme"), [("base", 178_349_664, 175e6), ("large", 566_747_392, 562e6),
                                                       ("base_plus", 168_047_584, 167e6)])
def test_parameter_counts(size: str, total: int, readme: float) -> None:
    cfg = MomeConfig(size=size, **MomeConfig.SIZES[size])
    with torch.device("meta"):
        enc = build_mome(cfg)
    params = list(enc.parameters())
    rows = {r.name: r.count for r in parameter_report(enc.parts())}
    assert sum(p.numel() for p in params) == rows["total"] == total
    assert abs(total - rows["heads (pooler, itc projections)"] - readme) < 0.5e6  # the README rounds to 1M
    seen: list[int] = []
    for group in enc.parts().values():
        for item in group:
            seen += [id(item)] if isinstance(item, torch.nn.Parameter) else [id(p) for p in item.parameters()]
    assert sorted(seen) == sorted(id(p) for p in params)  # every parameter in exactly one part


# --------------------------------------------------------------------------- (g) indexed fusion
def test_fuse_with_indices_equals_fusing_gathered_rows() -> None:
    enc = randomized(tiny())
    images, ids, mask = batch(pad_to=23)
    image_index, text_index = torch.tensor([2, 0, 0, 3, 1, 2]), torch.tensor([1, 1, 3, 0, 2, 3])
    with torch.no_grad():
        image, text = enc.encode_image(images), enc.encode_text(ids, mask, unimodal=False)
        got = enc.fuse(image, text, image_index=image_index, text_index=text_index, image_kv=object())
        want = enc.fuse(image.select(image_index), text.select(text_index))
    for a, b in ((got.text, want.text), (got.image, want.image), (got.cls, want.cls)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert got.text.shape == (6, 23, 64) and text.embeds is None


# --------------------------------------------------------------------------- config, checkpoints, shapes
def test_config_rules_name_their_key() -> None:
    for overrides, key in (({"vl_start": 5}, "vl_start"), ({"heads": 5}, "heads"), ({"image_size": 30}, "image_size"),
                           ({"max_text_len": 197}, "max_text_len"), ({"type_vocab_size": 1}, "type_vocab_size")):
        with pytest.raises(ConfigError) as err:
            tiny(**overrides)
        assert err.value.key == key
    cfg = validate_component("encoder", {"type": "mome", "size": "tiny"})
    assert isinstance(cfg, MomeConfig) and (cfg.dim, cfg.depth, cfg.vl_start, cfg.grid) == (64, 4, 2, 4)
    plus = validate_component("encoder", {"type": "mome", "size": "base_plus"})
    assert plus.position == "absolute" and plus.layer_scale is None


def test_runtime_length_and_size_errors() -> None:
    absolute = build_mome(tiny(position="absolute", layer_scale=None))
    with pytest.raises(ValueError, match="max_text_len = 40"):
        absolute.encode_text(torch.ones(1, 41, dtype=torch.long), torch.ones(1, 41))
    relative = build_mome(tiny())
    relative.encode_text(torch.ones(1, 41, dtype=torch.long), torch.ones(1, 41))  # relative: up to 196 tokens
    with pytest.raises(ValueError, match="max_text_len_of_initckpt"):
        relative.encode_text(torch.ones(1, 197, dtype=torch.long), torch.ones(1, 197))
    with pytest.raises(ValueError, match="patches"):
        relative.encode_image(torch.randn(1, 3, 40, 40))


def test_state_dict_uses_vlmo_names_and_loads_vlmo_extras() -> None:
    enc = build_mome(tiny())
    sd = enc.state_dict()
    block = ("attn.qkv.weight", "attn.q_bias", "attn.v_bias", "attn.proj.bias", "gamma_1", "gamma_2", "norm1.weight",
             "norm2_imag.weight", "norm2_text.bias", "mlp_text.fc2.weight", "mlp_imag.fc1.bias")
    for key in ("transformer.cls_token", "transformer.patch_embed.proj.weight", "transformer.norm.weight",
                *(f"transformer.blocks.{i}.{name}" for i in range(4) for name in block),
                "transformer.blocks.2.mlp_vl.fc1.weight", "transformer.blocks.3.norm2_vl.bias",
                "relative_position_bias_table", "text_embeddings.word_embeddings.weight",
                "text_embeddings.token_type_embeddings.weight", "text_embeddings.LayerNorm.weight",
                "token_type_embeddings.weight", "pooler.dense.weight", "itc_text_proj.fc.weight",
                "itc_image_proj.fc.weight", "itc_vl_text_proj.fc.weight", "itc_vl_image_proj.fc.weight"):
        assert key in sd, key
    assert "transformer.blocks.1.mlp_vl.fc1.weight" not in sd and "transformer.pos_embed" not in sd
    assert "transformer.blocks.0.attn.qkv.bias" not in sd and "itc_text_proj.fc.bias" not in sd
    assert sd["relative_position_bias_table"].shape == (num_buckets(4), 4 * 4)
    vlmo = {**sd, "relative_position_index": torch.zeros(17, 17), "text_relative_position_index": torch.zeros(40, 40),
            "text_imag_relative_position_index": torch.zeros(57, 57),
            "text_embeddings.position_embeddings.weight": torch.zeros(40, 64)}
    enc.load_state_dict(vlmo)  # strict: VLMo's derived buffers and unused text position table are dropped


def test_forward_is_shape_static_on_the_meta_device() -> None:
    """Meta tensors have no values: any host sync (.item(), .tolist(), data-dependent shapes) would fail."""
    with torch.device("meta"):
        enc = build_mome(tiny(attention="sdpa"))
        image = enc.encode_image(torch.empty(2, 3, 32, 32))
        text = enc.encode_text(torch.zeros(3, 7, dtype=torch.long), torch.ones(3, 7))
        fused = enc.fuse(image, text, image_index=torch.zeros(3, dtype=torch.long))
    assert fused.cls.shape == (3, 64) and fused.image.shape == (3, 17, 64) and image.vl_feat.shape == (2, 64)


def test_shared_ffn_is_one_standard_ffn_for_every_token() -> None:
    """``experts: shared`` (the ablation's standard transformer): every route uses the one FFN."""
    torch.manual_seed(0)
    block = MultiwayBlock(32, 4, layer_scale=0.5, backend="math", shared_ffn=True).eval()
    assert block.mlp_imag is None and block.norm2_imag is None and block.mlp_vl is None
    x = torch.randn(2, 9, 32)
    h = x + block.gamma_1 * block.attn(block.norm1(x))
    want = h + block.gamma_2 * block.mlp_text(block.norm2_text(h))
    for routes in ([("text", 4), ("image", 5)], [("image", 9)], [("vl", 9)]):
        torch.testing.assert_close(block(x, routes), want, **TOL)
    assert block.fusion_routes(4, 5) == [("text", 9)]
    enc = randomized(tiny(vl_start=4, experts="shared"))
    images, ids, mask = batch(pad_to=23)
    with torch.no_grad():
        fused = enc.fuse(enc.encode_image(images), enc.encode_text(ids, mask))
    assert torch.isfinite(fused.cls).all()
    with pytest.raises(ConfigError, match="vl_start"):
        tiny(vl_start=2, experts="shared")
