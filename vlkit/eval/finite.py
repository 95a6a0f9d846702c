"""No metric from non-finite numbers: every evaluation that ranks, thresholds or argmaxes scores checks
them first (retrieval, the swap probe, zero-shot and task classification, VQA, Grad-CAM grounding,
composed retrieval). A NaN compares false with everything and ``argmax`` picks it, so a model whose
outputs are NaN would otherwise score any number at all (a perfect recall, among others); here it is a
:class:`~vlkit.core.errors.NonFiniteError` naming what was scored (exit 3 on the command line)."""

from __future__ import annotations

import torch
from torch import Tensor

from vlkit.core.errors import NonFiniteError

ADVICE = ("no metric is computed from them. The model's outputs overflowed or its weights are not finite "
          "(vlkit eval refuses non-finite checkpoints; huge but finite weights, e.g. from an oversized "
          "train.lr, can still overflow)")


def require_finite_scores(scores: Tensor, what: str) -> None:
    """Raise :class:`~vlkit.core.errors.NonFiniteError` when ``scores`` hold NaN or ±inf (a host sync:
    evaluation only, never inside a training step)."""
    finite = torch.isfinite(scores.detach())
    if bool(finite.all()):
        return
    bad = int((~finite).sum())
    raise NonFiniteError(f"{what}: {bad} of {scores.numel()} values are NaN or infinite; {ADVICE}")
