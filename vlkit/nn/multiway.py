"""VLMo's multiway transformer: shared self-attention, one feed-forward expert per modality.

A :class:`MultiwayBlock` is a pre-LN block whose attention is shared by every token and whose FFN
is chosen per contiguous segment of the sequence (a *route*): ``text`` and ``image`` experts exist
in every block, the ``vl`` expert only in the top blocks. Routes are ``(expert, num_tokens)`` pairs
with Python-int lengths read from tensor shapes, so routing needs no device sync and no fixed text
length (VLMo splits a fused sequence at a constant ``max_text_len``; here the caller says where the
text ends).

State-dict names follow VLMo's ``MultiWayTransformer`` (``transformer.*`` in its checkpoints):
``blocks.{i}.{norm1, attn.{qkv.weight, q_bias, v_bias, proj}, gamma_1, gamma_2, norm2_text,
norm2_imag, mlp_text.{fc1, fc2}, mlp_imag.{fc1, fc2}, norm2_vl, mlp_vl.{fc1, fc2}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from vlkit.nn.checkpointing import CheckpointedBlock
from vlkit.nn.init import trunc_normal_init_
from vlkit.nn.patch_mask import PatchMask
from vlkit.nn.self_attention import SelfAttention
from vlkit.nn.stem import Stem, build_stem
from vlkit.nn.vit import drop_path_rates

Expert = Literal["text", "image", "vl"]
EXPERTS: tuple[Expert, ...] = ("text", "image", "vl")
Route = tuple[Expert, int]
"""``(expert, num_tokens)``: the next ``num_tokens`` tokens go through ``expert``'s FFN."""


def modality_ids(routes: Sequence[Route], *, device: torch.device | str | None = None) -> Tensor:
    """Per-token expert id (index into :data:`EXPERTS`) of a layout: long ``[N]``, ``N`` = Σ lengths."""
    return torch.cat([torch.full((n,), EXPERTS.index(name), dtype=torch.long, device=device) for name, n in routes])


class MultiwayBlock(CheckpointedBlock):
    """Pre-LN block with shared attention and per-modality FFN experts: ``[B, N, D]`` → ``[B, N, D]``.

    ``x + drop_path(γ₁ · attn(norm1(x)))``, then for each route segment ``s`` with expert ``e``:
    ``s + drop_path(γ₂ · mlp_e(norm2_e(s)))``. Layer scales ``γ`` are shared by all experts; stochastic
    depth draws its per-sample mask independently for each segment, as VLMo's split does. Checkpointable,
    see :mod:`vlkit.nn.checkpointing`.

    Args:
        dim: width ``D``.
        heads: attention heads.
        mlp_ratio: FFN width / ``D``.
        vl_expert: build the ``vl`` expert (``mlp_vl``, ``norm2_vl``).
        shared_ffn: one FFN for every token (a standard transformer block, for ablations): only
            ``mlp_text`` / ``norm2_text`` exist and every expert name routes to them.
        layer_scale: initial ``γ₁``, ``γ₂`` (VLMo: 0.1); None builds no layer scale.
        eps: LayerNorm epsilon.
        drop_path: stochastic-depth rate of this block.
        backend: attention backend.
    """

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, vl_expert: bool = False,
                 layer_scale: float | None = 0.1, eps: float = 1e-6, drop_path: float = 0.0,
                 backend: str = "auto", shared_ffn: bool = False) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, qkv_bias="qv", backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if shared_ffn and vl_expert:
            raise ValueError("a shared FFN has no vl expert")
        self.shared_ffn = shared_ffn
        self.norm2_text = nn.LayerNorm(dim, eps=eps)
        self.mlp_text = Mlp(dim, hidden)
        self.norm2_imag: nn.LayerNorm | None = None if shared_ffn else nn.LayerNorm(dim, eps=eps)
        self.mlp_imag: Mlp | None = None if shared_ffn else Mlp(dim, hidden)
        self.norm2_vl: nn.LayerNorm | None = nn.LayerNorm(dim, eps=eps) if vl_expert else None
        self.mlp_vl: Mlp | None = Mlp(dim, hidden) if vl_expert else None
        self.layer_scale = layer_scale
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale))

    @property
    def has_vl_expert(self) -> bool:
        return self.mlp_vl is not None

    def expert(self, name: str) -> tuple[nn.Module, nn.Module]:
        """``(norm2, mlp)`` of expert ``name`` (``text``, ``image`` or ``vl``)."""
        if self.shared_ffn and name in EXPERTS:
            return self.norm2_text, self.mlp_text
        if name == "text":
            return self.norm2_text, self.mlp_text
        if name == "image":
            if self.norm2_imag is None or self.mlp_imag is None:  # only a shared FFN has none (handled above)
                raise ValueError("this block has no image expert")
            return self.norm2_imag, self.mlp_imag
        if name == "vl":
            if self.norm2_vl is None or self.mlp_vl is None:
                raise ValueError("this block has no vl expert (it sits below vl_start)")
            return self.norm2_vl, self.mlp_vl
        raise ValueError(f"unknown expert `{name}`; valid: {', '.join(EXPERTS)}")

    def fusion_routes(self, text_len: int, image_len: int) -> list[Route]:
        """Routes of a fused ``[text, image]`` sequence: the vl expert if this block has one, else
        text tokens through the text expert and image tokens through the image expert."""
        if self.has_vl_expert:
            return [("vl", text_len + image_len)]
        if self.shared_ffn:
            return [("text", text_len + image_len)]
        return [("text", text_len), ("image", image_len)]

    @staticmethod
    def _scale(gamma: Tensor | None, x: Tensor) -> Tensor:
        return x if gamma is None else gamma * x

    def _ffn(self, name: str, x: Tensor) -> Tensor:
        norm, mlp = self.expert(name)
        return x + self.drop_path(self._scale(self.gamma_2, mlp(norm(x))))

    def _block_forward(self, x: Tensor, routes: Sequence[Route], *, key_padding_mask: Tensor | None = None,
                        bias: Tensor | None = None) -> Tensor:
        """One block.

        Args:
            x: tokens ``[B, N, D]``.
            routes: ``(expert, num_tokens)`` segments covering the ``N`` tokens in order.
            key_padding_mask: bool ``[B, N]``, True for tokens that may be attended to.
            bias: additive attention bias broadcastable to ``[B, H, N, N]`` (relative positions).

        Returns:
            ``[B, N, D]``.
        """
        lengths = [n for _, n in routes]
        if sum(lengths) != x.shape[1] or any(n <= 0 for n in lengths):
            raise ValueError(f"routes {list(routes)} do not cover the {x.shape[1]} tokens of the sequence")
        x = x + self.drop_path(self._scale(self.gamma_1, self.attn(self.norm1(x), key_padding_mask=key_padding_mask,
                                                                      bias=bias)))
        if len(routes) == 1:
            return self._ffn(routes[0][0], x)
        segments = x.split(lengths, dim=1)
        return torch.cat([self._ffn(name, s) for (name, _), s in zip(routes, segments, strict=True)], dim=1)


class MultiwayTransformer(nn.Module):
    """VLMo's ``transformer``: patch embedding, image [CLS] (and absolute positions), the blocks and
    the final norm. Embedding and routing policy live with the caller (the MoME encoder).

    Args:
        image_size: input side in pixels.
        patch_size: patch side in pixels.
        dim: width ``D``.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: FFN width / ``D``.
        vl_start: index of the first block with a ``vl`` expert (``depth``: none).
        layer_scale: initial layer scale (None: none).
        absolute_positions: learn ``pos_embed [1, 1 + P, D]`` for image tokens (VLMo base_plus).
        eps: LayerNorm epsilon.
        drop_path: stochastic-depth rate of the last block (linear from 0).
        init_std: std of the weight initialization.
        stem: patch embedding, ``patch`` or ``conv`` (see :mod:`vlkit.nn.stem`).
        backend: attention backend.
        shared_ffn: one FFN per block for all tokens (no experts; ``vl_start`` must be ``depth``).
    """

    def __init__(self, *, image_size: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, vl_start: int, layer_scale: float | None = 0.1,
                 absolute_positions: bool = False, eps: float = 1e-6, drop_path: float = 0.0,
                 init_std: float = 0.02, stem: Stem = "patch", backend: str = "auto",
                 shared_ffn: bool = False) -> None:
        super().__init__()
        self.init_std = init_std
        self.grid = image_size // patch_size
        self.vl_start = vl_start
        self.patch_embed = build_stem(stem, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed: nn.Parameter | None = None
        if absolute_positions:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.ModuleList(
            MultiwayBlock(dim, heads, mlp_ratio=mlp_ratio, vl_expert=i >= vl_start, layer_scale=layer_scale,
                          eps=eps, drop_path=rate, backend=backend, shared_ffn=shared_ffn)
            for i, rate in enumerate(drop_path_rates(drop_path, depth))
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VLMo's initialization: truncated normal (std ``init_std``, 0.02 in VLMo) for Linear weights,
        [CLS] and positions;
        zero biases (``q_bias``, ``v_bias`` included); unit LayerNorms; layer scales at their initial
        value. The patch projection keeps PyTorch's default (as in VLMo)."""
        std = self.init_std
        nn.init.trunc_normal_(self.cls_token, std=std)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=std)
        trunc_normal_init_(self, std)
        for module in self.modules():
            if isinstance(module, SelfAttention) and module.q_bias is not None and module.v_bias is not None:
                nn.init.zeros_(module.q_bias)
                nn.init.zeros_(module.v_bias)
            elif isinstance(module, MultiwayBlock) and module.layer_scale is not None:
                for gamma in (module.gamma_1, module.gamma_2):
                    if gamma is not None:
                        nn.init.constant_(gamma, module.layer_scale)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block_at(self, index: int) -> MultiwayBlock:
        """Block ``index`` of :attr:`blocks`, as the :class:`MultiwayBlock` it is (a ``ModuleList`` hands
        out ``nn.Module``)."""
        block = self.blocks[index]
        if not isinstance(block, MultiwayBlock):
            raise TypeError(f"block {index} is a {type(block).__name__}, not a MultiwayBlock")
        return block

    @property
    def num_image_tokens(self) -> int:
        """``1 + P``: [CLS] and the patches at the configured image size."""
        return 1 + self.grid**2

    def embed(self, images: Tensor, patch_mask: PatchMask | None = None) -> Tensor:
        """``[B, 3, H, W]`` → ``[B, 1 + P, D]``: patches (those ``patch_mask`` names replaced by its
        token), [CLS] in front, absolute positions if any."""
        x = self.patch_embed(images)
        if patch_mask is not None:
            x = patch_mask.apply(x)
        if x.shape[1] != self.grid**2:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px give {x.shape[1]} patches; this encoder is "
                             f"built for {self.grid**2} patches (a {self.grid} × {self.grid} grid)")
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x if self.pos_embed is None else x + self.pos_embed
