"""The recipe's ``freeze``: glob patterns over parameter names whose parameters are not trained.

Stage-wise pre-training (VLMo's text-only stage trains only the text embeddings and the language
expert) and partial fine-tuning are then a recipe key: ``freeze: ["encoder.transformer.blocks.*.attn.*"]``.
Names are the model's (``encoder.…``, ``objectives.<name>.…``; ``vlkit recipes show RECIPE --params``
lists the parts); ``fnmatch`` rules (``*`` also crosses dots).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from vlkit.core.errors import ConfigError

log = logging.getLogger("vlkit.train")


@dataclass
class FreezeReport:
    """Counts after :func:`freeze_parameters` (elements; shared tensors once)."""

    frozen: int
    trainable: int
    frozen_tensors: int

    def summary(self) -> str:
        total = self.frozen + self.trainable
        return (f"{self.trainable:,} of {total:,} parameters trainable ({100 * self.trainable / max(total, 1):.1f}%); "
                f"{self.frozen_tensors} tensors ({self.frozen:,} parameters) frozen by `freeze`")


def freeze_parameters(model: nn.Module, patterns: list[str]) -> FreezeReport:
    """Stop the trainable parameters whose names match any of ``patterns`` from requiring grad.

    Raises:
        ValueError: a pattern matches no trainable parameter (it names the closest names).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    matched: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(params, pattern)
        if not hits:
            close = difflib.get_close_matches(pattern.replace("*", ""), list(params), n=3, cutoff=0.3)
            raise ConfigError(f"freeze pattern `{pattern}` matches no trainable parameter"
                             + (f"; names look like: {', '.join(close)}" if close else ""))
        matched.update(hits)
    for name in matched:
        params[name].requires_grad_(False)
    seen: set[int] = set()
    frozen = trainable = 0
    for p in model.parameters():  # each shared tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        elif any(p is params.get(name) for name in matched):
            frozen += p.numel()
    return FreezeReport(frozen=frozen, trainable=trainable, frozen_tensors=len(matched))
