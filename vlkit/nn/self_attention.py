"""Fused-QKV multi-head self-attention in the timm / BEiT state-dict layout."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.nn.attention import AttentionLayer, attention, set_attention_backend

__all__ = ["SelfAttention", "set_attention_backend"]

QKVBias = Literal["qkv", "qv", "none"]


class SelfAttention(AttentionLayer):
    """Multi-head self-attention with one ``qkv`` projection.

    State-dict layout: ``qkv.weight [3D, D]``, ``qkv.bias [3D]`` (``qkv_bias="qkv"``, timm ViT) or
    ``q_bias [D]`` + ``v_bias [D]`` with no key bias (``qkv_bias="qv"``, BEiT / VLMo), and
    ``proj.{weight, bias}``.

    Args:
        dim: model width ``D``.
        heads: number of heads (``D`` must divide evenly).
        qkv_bias: which of q, k, v carry a bias.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
        backend: attention backend (see :func:`vlkit.nn.attention.attention`).
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: QKVBias = "qkv", attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        self.q_bias: nn.Parameter | None = None
        self.v_bias: nn.Parameter | None = None
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attention_backend = backend

    def _qkv(self, x: Tensor) -> Tensor:
        if self.q_bias is None or self.v_bias is None:  # set together (qkv_bias="qv")
            return self.qkv(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Attend over ``x``.

        Args:
            x: tokens ``[B, N, D]``.
            key_padding_mask: bool ``[B, N]``, True for real tokens.
            bias: additive bias broadcastable to ``[B, H, N, N]`` (relative positions).

        Returns:
            ``[B, N, D]``.
        """
        b, n, d = x.shape
        q, k, v = self._qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        out = attention(q, k, v, key_padding_mask=key_padding_mask, bias=bias,
                        dropout_p=self.attn_drop if self.training else 0.0, backend=self.attention_backend)
        return self.proj_drop(self.proj(out.reshape(b, n, d)))
