"""The attention entry point: sdpa against the math reference (fp32, relative error ≤ 1e-5) for every
shape the encoders use, forward and gradients; packed sequences; backend selection rules."""

from __future__ import annotations

import logging

import pytest
import torch

from vlkit.nn import attention as attn_mod
from vlkit.nn.attention import PackedSeqlens, attention, resolve_backend
from vlkit.nn.self_attention import SelfAttention

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def padding_mask(batch: int, length: int, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    return mask


# (name, B, Nq, Nk, H, D, padded key lengths or None, bias?)
SHAPES = [
    ("vit self 257 tokens", 2, 257, 257, 2, 16, None, False),
    ("vit self tiny", 3, 17, 17, 4, 16, None, False),
    ("bert text self, padded", 3, 11, 11, 4, 16, [11, 7, 3], False),
    ("albef cross text→image", 3, 11, 17, 4, 16, None, False),
    ("cross with image padding", 2, 9, 17, 4, 16, [17, 10], False),
    ("mome fused, rel-pos bias + padding", 2, 26, 26, 4, 16, [26, 20], True),
    ("mome image-only, rel-pos bias", 2, 17, 17, 4, 16, None, True),
    ("text padded to 64", 2, 64, 64, 2, 32, [64, 40], False),
]


@pytest.mark.parametrize("name,b,nq,nk,h,d,lengths,with_bias", SHAPES, ids=[s[0] for s in SHAPES])
def test_sdpa_matches_math_forward_and_gradients(name, b, nq, nk, h, d, lengths, with_bias):
    torch.manual_seed(0)
    q = torch.randn(b, nq, h, d, requires_grad=True)
    k = torch.randn(b, nk, h, d, requires_grad=True)
    v = torch.randn(b, nk, h, d, requires_grad=True)
    mask = padding_mask(b, nk, lengths) if lengths else None
    bias = torch.randn(1, h, nq, nk, requires_grad=True) if with_bias else None
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grad_out = torch.randn(b, nq, h, d)

    results = {}
    for backend in ("math", "sdpa"):
        out = attention(q, k, v, key_padding_mask=mask, bias=bias, backend=backend)
        grads = torch.autograd.grad(out, leaves, grad_out)
        results[backend] = (out, grads)
    out_m, grads_m = results["math"]
    out_s, grads_s = results["sdpa"]
    assert out_s.shape == (b, nq, h, d)
    assert rel_err(out_s, out_m) <= TOL
    for g_s, g_m in zip(grads_s, grads_m, strict=True):
        assert rel_err(g_s, g_m) <= TOL


def test_math_matches_explicit_formula():
    """The reference itself: softmax(q·kᵀ/√d + bias, masked) · v, written out per head."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 5, 3, 8), torch.randn(2, 6, 3, 8), torch.randn(2, 6, 3, 8)
    bias = torch.randn(1, 3, 5, 6)
    mask = padding_mask(2, 6, [6, 4])
    out = attention(q, k, v, key_padding_mask=mask, bias=bias, backend="math")
    for bi in range(2):
        for hi in range(3):
            scores = q[bi, :, hi] @ k[bi, :, hi].T / 8**0.5 + bias[0, hi]
            scores[:, ~mask[bi]] = float("-inf")
            expected = scores.softmax(-1) @ v[bi, :, hi]
            torch.testing.assert_close(out[bi, :, hi], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_packed_sequences_equal_separate_calls(backend):
    """Packed self- and cross-attention give the same rows as attending each sequence alone."""
    torch.manual_seed(2)
    h, d = 4, 16
    q_lens, k_lens = (3, 5, 2), (7, 7, 4)
    q = torch.randn(1, sum(q_lens), h, d)
    k = torch.randn(1, sum(k_lens), h, d)
    v = torch.randn(1, sum(k_lens), h, d)
    packed = attention(q, k, v, packed=PackedSeqlens(q_lens, k_lens), backend=backend)
    qs, ks, vs = q.split(q_lens, 1), k.split(k_lens, 1), v.split(k_lens, 1)
    separate = torch.cat([attention(a, b, c, backend="math") for a, b, c in zip(qs, ks, vs, strict=True)], 1)
    assert rel_err(packed, separate) <= TOL
    self_packed = attention(q, q, q, packed=PackedSeqlens(q_lens), backend=backend)
    self_separate = torch.cat([attention(a, a, a, backend="math") for a in qs], 1)
    assert rel_err(self_packed, self_separate) <= TOL


def test_packed_rejects_mismatched_lengths_and_padding():
    q = torch.randn(1, 6, 2, 8)
    with pytest.raises(ValueError, match="packed lengths"):
        attention(q, q, q, packed=PackedSeqlens((3, 2)))
    with pytest.raises(ValueError, match="B == 1"):
        attention(q, q, q, packed=PackedSeqlens((3, 3)), key_padding_mask=torch.ones(1, 6, dtype=torch.bool))


def test_sdpa_mask_takes_query_dtype():
    """An fp32 bias with bf16 queries must reach SDPA in bf16 (cuDNN misreads fp32 masks)."""
    mask = attn_mod._sdpa_mask(torch.ones(2, 5, dtype=torch.bool), torch.zeros(1, 2, 5, 5), torch.bfloat16)
    assert mask.dtype == torch.bfloat16
    assert attn_mod._sdpa_mask(torch.ones(2, 5, dtype=torch.bool), None, torch.bfloat16).dtype == torch.bool


def test_bf16_sdpa_close_to_math_on_cpu():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 33, 4, 16, dtype=torch.bfloat16) for _ in range(3))
    mask = padding_mask(2, 33, [33, 20])
    out = attention(q, k, v, key_padding_mask=mask, backend="sdpa")
    ref = attention(q, k, v, key_padding_mask=mask, backend="math")
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref.float()) <= 1e-2


def test_auto_never_picks_xformers_on_cpu(caplog):
    attn_mod._logged_choices.clear()
    with caplog.at_level(logging.INFO, logger="vlkit.attention"):
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert sum("attention backend: sdpa" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_explicit_xformers_on_cpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no kernels for device `cpu`"):
        attention(*(torch.randn(1, 4, 2, 8) for _ in range(3)), backend="xformers")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown attention backend `flash`"):
        resolve_backend("flash", torch.device("cpu"))


def test_self_attention_dropout_only_in_training():
    torch.manual_seed(4)
    layer = SelfAttention(32, 4, attn_drop=0.5, backend="sdpa")
    x = torch.randn(2, 9, 32)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_qv_bias_layout_has_zero_key_bias():
    """BEiT/VLMo attention: q and v biases, no key bias; equals a qkv Linear with bias [q, 0, v]."""
    torch.manual_seed(5)
    layer = SelfAttention(16, 2, qkv_bias="qv", backend="math")
    assert layer.qkv.bias is None and layer.q_bias is not None and layer.v_bias is not None
    with torch.no_grad():
        layer.q_bias.normal_()
        layer.v_bias.normal_()
    x = torch.randn(1, 3, 16)
    full = torch.nn.Linear(16, 48)
    with torch.no_grad():
        full.weight.copy_(layer.qkv.weight)
        full.bias.copy_(torch.cat([layer.q_bias, torch.zeros(16), layer.v_bias]))
    torch.testing.assert_close(layer._qkv(x), full(x))
