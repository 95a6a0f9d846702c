"""Vision Transformer image encoder, state-dict compatible with timm's ``VisionTransformer``.

Pre-LN blocks (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``), fused ``qkv``, a CLS token and
absolute position embeddings. Loading a checkpoint made at another resolution (e.g. DeiT-B/16 at 224
into a 256 model) interpolates the position grid bicubically, as ALBEF does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import DropPath, Mlp, resample_abs_pos_embed
from torch import Tensor, nn

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_MLP_RATIO, MAX_WIDTH, check_count, check_number
from vlkit.core.weight_source import WeightSource
from vlkit.nn.checkpointing import CheckpointedBlock
from vlkit.nn.init import trunc_normal_init_
from vlkit.nn.patch_mask import PatchMask
from vlkit.nn.self_attention import SelfAttention
from vlkit.nn.stem import Stem, build_stem, stem_problem


@dataclass(kw_only=True)
class ViTConfig:
    """Shape of a ViT.

    Attributes:
        image_size: input side in pixels (square images).
        patch_size: patch side in pixels.
        dim: width ``D``.
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: FFN width / ``D``.
        qkv_bias: bias on the fused qkv projection.
        eps: LayerNorm epsilon (1e-6 in ALBEF / DeiT).
        drop_path: stochastic-depth rate of the last block (linear from 0).
        init_std: std of the truncated-normal initialization of weights and embeddings (timm: 0.02,
            tuned for width 768; narrow models need ~0.02·√(768/dim) to keep activations at that scale).
        stem: patch embedding: ``patch`` (ViT's linear patches) or ``conv`` (a convolutional stem for
            training small models from scratch; see :mod:`vlkit.nn.stem`).
        init: pre-trained weights to start from, loaded when the encoder is built (:mod:`vlkit.weights`):
            ``timm:<model>`` (``timm:deit_base_patch16_224``, downloaded by timm) or a local timm / DeiT
            weights file (``.pth``, ``.bin``, ``.safetensors``) or Hugging Face style folder; the position
            grid is resized to ``image_size``. null: random initialization.
    """

    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    eps: float = 1e-6
    drop_path: float = 0.0
    init_std: float = 0.02
    stem: Stem = "patch"
    init: WeightSource | None = None

    def __post_init__(self) -> None:
        check_count("image_size", self.image_size, high=MAX_IMAGE_SIDE)
        check_count("patch_size", self.patch_size, high=MAX_IMAGE_SIDE)
        check_count("dim", self.dim, high=MAX_WIDTH)
        check_count("heads", self.heads, high=MAX_WIDTH)
        check_count("depth", self.depth, high=MAX_LAYERS)
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}", key="heads")
        check_number("mlp_ratio", self.mlp_ratio, 0, MAX_MLP_RATIO, low_open=True)
        check_number("eps", self.eps, 0, low_open=True)
        check_number("drop_path", self.drop_path, 0, 1, high_open=True)
        check_number("init_std", self.init_std, 0)

    def check_patches(self) -> None:
        """Raise unless the image side is a whole number of patches (checked where a ViT is built
        from this shape; a timm backbone reads only ``image_size``)."""
        if self.image_size % self.patch_size:
            raise ConfigError(f"{self.image_size} is not a multiple of patch_size {self.patch_size}",
                              key="image_size")
        if problem := stem_problem(self.stem, self.patch_size):
            raise ConfigError(problem, key="stem")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class ViTBlock(CheckpointedBlock):
    """Pre-LN transformer block: ``[B, N, D]`` → ``[B, N, D]`` (checkpointable, see
    :mod:`vlkit.nn.checkpointing`)."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-6, drop_path: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, qkv_bias="qkv" if qkv_bias else "none", backend=backend)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _block_forward(self, x: Tensor) -> Tensor:
        """``[B, N, D]`` → ``[B, N, D]``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a CLS token; returns every token after the final norm.

    State dict: ``cls_token [1,1,D]``, ``pos_embed [1,1+P,D]``, ``patch_embed.proj.*``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*`` — timm's layout
    (the ``conv`` stem adds ``patch_embed.stem.*``; its ``patch_embed.proj`` is a 1×1 convolution).
    """

    def __init__(self, cfg: ViTConfig, backend: str = "auto") -> None:
        super().__init__()
        cfg.check_patches()
        self.cfg = cfg
        self.patch_embed = build_stem(cfg.stem, cfg.patch_size, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, cfg.dim))
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.dim, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, eps=cfg.eps,
                     drop_path=rate, backend=backend)
            for rate in drop_path_rates(cfg.drop_path, cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self._register_load_state_dict_pre_hook(self._resize_pos_embed_on_load)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's ViT initialization: truncated normal (std ``init_std``) for weights and embeddings."""
        std = self.cfg.init_std
        nn.init.trunc_normal_(self.pos_embed, std=std)
        nn.init.trunc_normal_(self.cls_token, std=std)
        trunc_normal_init_(self, std)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def embed(self, images: Tensor, patch_mask: PatchMask | None = None) -> Tensor:
        """Patch embeddings with CLS and positions: ``[B, 3, H, W]`` → ``[B, 1+P, D]``; ``patch_mask``
        replaces the chosen patch embeddings by its token (before positions are added)."""
        x = self.patch_embed(images)
        if patch_mask is not None:
            x = patch_mask.apply(x)
        if x.shape[1] != self.pos_embed.shape[1] - 1:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px give {x.shape[1]} patches; this ViT "
                             f"is built for {self.cfg.image_size} px ({self.pos_embed.shape[1] - 1} patches)")
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1) + self.pos_embed

    def forward(self, images: Tensor, patch_mask: PatchMask | None = None) -> Tensor:
        """``[B, 3, H, W]`` → ``[B, 1+P, D]`` (``image_embeds``), masked patches as ``patch_mask`` says."""
        x = self.embed(images, patch_mask)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _resize_pos_embed_on_load(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "pos_embed"
        source = state_dict.get(key)
        if source is not None and source.shape != self.pos_embed.shape:
            state_dict[key] = resize_pos_embed(source, self.cfg.grid)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, linear from 0 to ``rate`` (timm's rule)."""
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


def resize_pos_embed(pos_embed: Tensor, grid: int, num_prefix_tokens: int = 1) -> Tensor:
    """Bicubic resize of a square position grid: ``[1, k+s², D]`` → ``[1, k+grid², D]`` (prefix kept)."""
    return resample_abs_pos_embed(pos_embed, [grid, grid], num_prefix_tokens=num_prefix_tokens,
                                  interpolation="bicubic", antialias=False)
