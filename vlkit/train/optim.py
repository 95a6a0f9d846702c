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


def is_head(name: str) -> bool:
    """A parameter of an objective's head (``objectives.<name>.head.…``), e.g. a task classifier."""
    parts = name.split(".")
    return len(parts) > 2 and parts[0] == "objectives" and parts[2] == "head"


def param_groups(model: nn.Module, weight_decay: float, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups over the trainable parameters (each shared tensor once): with / without weight
    decay, and heads apart at ``lr · head_lr_mult`` when the multiplier is not 1 (empty groups left out)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    split_heads = head_lr_mult != 1.0
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((split_heads and is_head(name), decays(name, param)), []).append(param)
    order = [(False, True), (False, False), (True, True), (True, False)]
    return [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0,
             "lr": lr * (head_lr_mult if key[0] else 1.0)} for key in order if key in groups]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``: the fused kernel on CUDA and on the CPU (on ALBEF-base's 210M parameters the
    CPU's fused step takes 89 ms against 506 ms with ``foreach``: ``benchmarks/fast_paths.py``), foreach
    elsewhere (e.g. the meta device)."""
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.head_lr_mult)
    beta1, beta2 = cfg.betas  # two numbers (TrainConfig checks)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, **extra)
