"""GPU checks of the fused kernels: xformers and sdpa against the math reference in bf16.

Skipped without CUDA (CI has none). Run on a GPU machine with
``python -m pytest tests/test_attention_gpu.py -v``. Tolerance: relative error ≤ 1e-2 in bf16
(forward and gradients), no NaN anywhere, including a text length of 64 with padding (64 % 128 == 64
is the shape where cuDNN's masked backward has produced NaN).
"""

from __future__ import annotations

import pytest
import torch

from vlkit.nn.attention import PackedSeqlens, attention, xformers_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TOL = 1e-2
BACKENDS = ["sdpa", pytest.param("xformers", marks=pytest.mark.skipif(
    not xformers_available(), reason="xformers not installed"))]

# (name, B, Nq, Nk, H, D, padded key lengths, bias)
SHAPES = [
    ("vit 257", 8, 257, 257, 12, 64, None, False),
    ("text 30 padded", 8, 30, 30, 12, 64, [30, 17, 5, 30, 30, 12, 30, 29], False),
    ("text 64 padded", 4, 64, 64, 12, 64, [64, 40, 13, 64], False),
    ("cross 30→257", 8, 30, 257, 12, 64, None, False),
    ("mome fused 237, bias + padding", 4, 237, 237, 12, 64, [237, 220, 210, 237], True),
    ("mome image 197, bias", 4, 197, 197, 12, 64, None, True),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,b,nq,nk,h,d,lengths,with_bias", SHAPES, ids=[s[0] for s in SHAPES])
def test_bf16_kernel_matches_math(backend, name, b, nq, nk, h, d, lengths, with_bias):
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    q = torch.randn(b, nq, h, d, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(b, nk, h, d, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(b, nk, h, d, device=dev, dtype=dt, requires_grad=True)
    mask = None
    if lengths:
        mask = torch.arange(nk, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
    bias = torch.randn(1, h, nq, nk, device=dev, dtype=torch.float32, requires_grad=True) if with_bias else None
    leaves = [t for t in (q, k, v, bias) if t is not None]
    grad_out = torch.randn(b, nq, h, d, device=dev, dtype=dt)

    out_ref = attention(q, k, v, key_padding_mask=mask, bias=bias, backend="math")
    grads_ref = torch.autograd.grad(out_ref, leaves, grad_out)
    out = attention(q, k, v, key_padding_mask=mask, bias=bias, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)

    assert torch.isfinite(out).all()
    assert rel_err(out, out_ref) <= TOL
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert torch.isfinite(g).all()
        assert rel_err(g, g_ref) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_packed_text_matches_separate(backend):
    torch.manual_seed(1)
    dev, dt = torch.device("cuda"), torch.bfloat16
    lens = (12, 30, 7, 25)
    q = torch.randn(1, sum(lens), 12, 64, device=dev, dtype=dt)
    out = attention(q, q, q, packed=PackedSeqlens(lens), backend=backend)
    ref = torch.cat([attention(x, x, x, backend="math") for x in q.split(lens, 1)], 1)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL


def test_auto_picks_a_kernel_that_runs_on_cuda():
    q = torch.randn(2, 17, 4, 64, device="cuda", dtype=torch.bfloat16)
    out = attention(q, q, q, backend="auto")
    assert out.shape == q.shape and torch.isfinite(out).all()
