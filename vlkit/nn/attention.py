"""One entry point for self- and cross-attention, with interchangeable kernels.

Layout: ``[B, N, H, D]`` (batch, tokens, heads, head dim) for queries, keys, values and output; a
fused-QKV projection reshapes to it without a copy and it is xformers' native layout.

Backends:

- ``xformers``: ``xformers.ops.memory_efficient_attention``; key padding and biases become an
  additive tensor in the query dtype with an 8-aligned row stride; packed variable-length sequences
  use its block-diagonal masks. CUDA only.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; a key-padding mask alone is passed
  as bool, a bias (with or without padding) as an additive mask in the query dtype (never an fp32 mask
  with bf16 queries). On CUDA, masked calls are pinned to the memory-efficient kernel (it supports the
  mask's gradient; cuDNN has given NaN gradients for masked shapes with ``N % 128 == 64``).
- ``math``: the plain reference, computed in fp32 and cast back; tests compare the others against it.

Packed sequences (``packed``, a ``B == 1`` batch of sequences laid end to end) run on xformers with a
``BlockDiagonalMask``; sdpa and math scatter packed self-attention into a padded batch with a key mask
(the same work as unpacked attention, so the GEMMs around it keep the saving) and gather it back.
- ``auto``: xformers on CUDA when it imports, else sdpa. It never picks a backend that cannot run on
  the tensors' device, and logs its choice once per device type.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import typing
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.errors import ConfigError, UnavailableError
from vlkit.nn.packing import PackedSeqlens, real_token_positions

Backend = Literal["auto", "xformers", "sdpa", "math"]
"""The attention backends (the one list; recipes' ``encoder.attention`` is typed with it)."""
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


def is_backend(name: str) -> typing.TypeGuard[Backend]:
    """``name`` is one of :data:`BACKENDS`."""
    return name in BACKENDS


log = logging.getLogger("vlkit.attention")
_logged_choices: set[tuple[str, str]] = set()


class AttentionLayer(nn.Module):
    """Base of the modules that call :func:`attention`; ``attention_backend`` names the kernel they ask
    for (:func:`set_attention_backend` repoints them all)."""

    attention_backend: str


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Point every attention layer inside ``module`` at ``backend``."""
    for child in module.modules():
        if isinstance(child, AttentionLayer):
            child.attention_backend = backend


@functools.cache
def xformers_available() -> bool:
    """True when ``xformers.ops`` imports (it has CUDA kernels only)."""
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception as err:  # broken builds raise all sorts of errors at import
        log.warning("xformers is installed but does not import (%s); using sdpa", err)
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` on ``device``; ``auto`` picks and logs once."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend `{backend}`; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        chosen = "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
        key = (device.type, chosen)
        if key not in _logged_choices:
            _logged_choices.add(key)
            log.info("attention backend: %s (auto, device %s)", chosen, device.type)
        return chosen
    if backend == "xformers":
        if device.type != "cuda":
            raise UnavailableError(
                f"attention backend `xformers` has no kernels for device `{device.type}`; "
                "use `auto` (xformers on CUDA, sdpa elsewhere) or `sdpa`"
            )
        if not xformers_available():
            raise UnavailableError("attention backend `xformers` requested but xformers is not importable; "
                               "install it with `pip install vlkit[xformers]` or use `auto`/`sdpa`")
    return backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    packed: PackedSeqlens | None = None,
    backend: str = "auto",
) -> Tensor:
    """Scaled dot-product attention.

    Args:
        q: queries ``[B, Nq, H, D]``.
        k: keys ``[B, Nk, H, D]`` (``Nk`` may differ from ``Nq``: cross-attention).
        v: values ``[B, Nk, H, Dv]``.
        key_padding_mask: bool ``[B, Nk]``, True where a key may be attended to.
        bias: additive float bias broadcastable to ``[B, H, Nq, Nk]`` (e.g. a relative-position
            bias ``[1, H, Nq, Nk]``); gradients flow into it.
        dropout_p: dropout on the attention probabilities (pass 0 in eval mode).
        scale: logit scale; default ``D ** -0.5``.
        packed: lengths of sequences packed in a ``B == 1`` batch; each attends only within itself.
        backend: ``auto``, ``xformers``, ``sdpa`` or ``math``.

    Returns:
        ``[B, Nq, H, Dv]`` in the dtype of ``q``.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        shapes = ", ".join(str(tuple(t.shape)) for t in (q, k, v))
        raise ValueError(f"attention expects [B, N, H, D] tensors, got {shapes}")
    if packed is not None:
        if q.shape[0] != 1 or key_padding_mask is not None or bias is not None:
            raise ValueError("packed sequences need B == 1 and take no key_padding_mask or bias")
        if sum(packed.q) != q.shape[1] or sum(packed.kv) != k.shape[1]:
            raise ValueError(f"packed lengths sum to {sum(packed.q)}/{sum(packed.kv)}, "
                             f"tensors hold {q.shape[1]}/{k.shape[1]} tokens")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chosen = resolve_backend(backend, q.device)
    if chosen == "xformers":
        return _xformers(q, k, v, key_padding_mask, bias, dropout_p, scale, packed)
    if packed is not None and packed.k is None:  # self-attention: attend in a padded batch, repack
        index, mask = _padding_of(packed.q, q.device)
        out = attention(*(_pad(x, index, len(packed.q), max(packed.q)) for x in (q, k, v)), key_padding_mask=mask,
                        dropout_p=dropout_p, scale=scale, backend=chosen)
        return out.flatten(0, 1).index_select(0, index).unsqueeze(0)
    if packed is not None:
        bias = _block_diagonal_bias(packed, q.device, torch.float32 if chosen == "math" else q.dtype)
    if chosen == "sdpa":
        return _sdpa(q, k, v, key_padding_mask, bias, dropout_p, scale)
    return _math(q, k, v, key_padding_mask, bias, dropout_p, scale)


# --------------------------------------------------------------------------- math
def _math(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, bias: Tensor | None,
          dropout_p: float, scale: float) -> Tensor:
    """Reference: explicit scores in fp32, masked keys at -inf."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float() * scale, k.float())
    if bias is not None:
        scores = scores + bias.float()
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


# --------------------------------------------------------------------------- sdpa
def _sdpa_mask(key_padding_mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool ``[B, 1, 1, Nk]`` for padding alone; otherwise an additive mask in ``dtype``."""
    if bias is None:
        return None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    bias = bias.to(dtype)
    if key_padding_mask is not None:
        bias = torch.where(key_padding_mask[:, None, None, :], bias, float("-inf"))
    return bias


def _sdpa(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, bias: Tensor | None,
          dropout_p: float, scale: float) -> Tensor:
    mask = _sdpa_mask(key_padding_mask, bias, q.dtype)
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    if q.device.type == "cuda":
        with torch.nn.attention.sdpa_kernel(_cuda_sdpa_kernels(masked=mask is not None), set_priority=True):
            out = F.scaled_dot_product_attention(*args, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    else:
        out = F.scaled_dot_product_attention(*args, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2)


@functools.cache
def _cuda_sdpa_kernels(masked: bool) -> list:
    from torch.nn.attention import SDPBackend

    if masked:  # efficient supports masks and their gradient; math is the last resort
        return [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@functools.lru_cache(maxsize=32)
def _padding_of(lengths: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """For sequences of ``lengths`` packed end to end: ``[T]`` flat positions of their tokens in a
    ``[n, max(lengths)]`` padded batch, and that batch's bool key mask (cached: every text layer of a
    step asks for the same lengths)."""

    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return real_token_positions(lengths, width).to(device), mask.to(device)


def _pad(x: Tensor, index: Tensor, rows: int, width: int) -> Tensor:
    """Packed ``[1, T, H, D]`` → padded ``[rows, width, H, D]`` (zeros at the padding)."""
    out = x.new_zeros(rows * width, *x.shape[2:])
    return out.index_copy(0, index, x[0]).unflatten(0, (rows, width))


def _block_diagonal_bias(packed: PackedSeqlens, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive ``[1, 1, ΣNq, ΣNk]`` mask: 0 within a packed sequence, -inf across sequences."""
    def segment_ids(lengths: tuple[int, ...]) -> Tensor:  # output size from the host: no device sync
        return torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                       torch.tensor(lengths, device=device), output_size=sum(lengths))

    q_ids, k_ids = segment_ids(packed.q), segment_ids(packed.kv)
    same = q_ids[:, None] == k_ids[None, :]
    zeros = torch.zeros((), dtype=dtype, device=device)
    return torch.where(same, zeros, float("-inf"))[None, None]


# --------------------------------------------------------------------------- xformers
def _aligned_bias(bias: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """``bias`` as a ``[B, H, Nq, Nk]`` view in ``dtype`` whose rows start at multiples of 8 elements.

    xformers' cutlass kernel needs the bias row stride to be a multiple of 8 (bf16/fp16). We
    allocate the key axis rounded up and slice; batch and head axes that ``bias`` broadcasts over
    stay broadcast (stride 0) instead of being materialized.
    """
    b, h, nq, nk = shape
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    alloc_b = 1 if bias.shape[0] == 1 else b
    alloc_h = 1 if bias.shape[1] == 1 else h
    storage = torch.empty((alloc_b, alloc_h, nq, math.ceil(nk / 8) * 8), dtype=dtype, device=bias.device)
    out = storage[..., :nk]
    out.copy_(bias.expand(alloc_b, alloc_h, nq, nk))
    return out.expand(b, h, nq, nk)


def _xformers(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, bias: Tensor | None,
              dropout_p: float, scale: float, packed: PackedSeqlens | None) -> Tensor:
    import xformers.ops as xops
    from xformers.ops import fmha

    attn_bias: object = None
    if packed is not None:
        attn_bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(packed.q), list(packed.kv))
    elif bias is not None or key_padding_mask is not None:
        b, nq, h, _ = q.shape
        nk = k.shape[1]
        full = bias.to(q.dtype) if bias is not None else torch.zeros((), dtype=q.dtype, device=q.device)
        if key_padding_mask is not None:
            full = torch.where(key_padding_mask[:, None, None, :], full, float("-inf"))
        attn_bias = _aligned_bias(full, (b, h, nq, nk), q.dtype)
    return xops.memory_efficient_attention(q, k, v, attn_bias=attn_bias, p=dropout_p, scale=scale)
