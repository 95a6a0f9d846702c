"""AdamW with decoupled weight decay on matrices only, fused kernels where available."""

from __future__ import annotations

import torch
from torch import nn

from vlkit.train.config import TrainConfig

# Parameters named like these are never decayed (besides every bias and every tensor of < 2 dims).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "position_embeddings", "token_type_embeddings",
                  "relative_position_bias_table", "gamma_1", "gamma_2")


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether ``param`` gets weight decay: matrices and conv kernels yes; biases, norms, scalars
    (temperatures), layer scales, position / token-type / [CLS] embeddings and bias tables no."""
    if param.ndim < 2 or name.endswith(".bias"):
        return False
    return not any(part in name for part in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters (each shared tensor once)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model`` (fused CUDA kernel on GPU, foreach elsewhere)."""
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, **extra)
