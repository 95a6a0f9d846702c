"""Weight initialization shared by the transformer stacks."""

from __future__ import annotations

from torch import nn


def trunc_normal_init_(module: nn.Module, std: float) -> None:
    """timm / BEiT initialization of every sub-module of ``module``, in module order: truncated normal
    (``std``) Linear weights and zero biases, unit LayerNorms. Other parameters are left alone."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            nn.init.trunc_normal_(child.weight, std=std)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.LayerNorm):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
