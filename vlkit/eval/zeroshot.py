"""Zero-shot classification as ALIGN and CLIP evaluate it: each class's text embedding is the
re-normalized mean of its normalized prompt embeddings (class name × templates); an image is
classified by cosine similarity of its contrastive feature to the class embeddings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vlkit import progress
from vlkit.encoders.base import Encoder, contrastive_feat
from vlkit.eval.finite import require_finite_scores

Tokenize = Callable[[list[str]], tuple[Tensor, Tensor]]
"""Texts → ``input_ids``, ``attention_mask`` ``[N, L]``."""


@torch.no_grad()
def class_embeddings(encoder: Encoder, tokenize: Tokenize, classes: Sequence[str], templates: Sequence[str], *,
                     batch_size: int, device: torch.device) -> Tensor:
    """``[C, E]`` L2-normalized class embeddings from ``len(classes) × len(templates)`` prompts."""
    prompts = [template.format(name) for name in classes for template in templates]
    ids, mask = tokenize(prompts)
    feats = torch.cat([contrastive_feat(encoder.encode_text(ids[i:i + batch_size].to(device),
                                                            mask[i:i + batch_size].to(device)))
                       for i in progress.track(range(0, len(prompts), batch_size), "encoding class prompts",
                                               total=len(prompts), unit="prompt",
                                               weight=lambda i: min(batch_size, len(prompts) - i))]).float()
    per_class = F.normalize(feats, dim=-1).view(len(classes), len(templates), -1).mean(1)
    return F.normalize(per_class, dim=-1)


@torch.no_grad()
def image_features(encoder: Encoder, batches: Iterable[Tensor], device: torch.device, *,
                   n_images: int | None = None, desc: str | None = "encoding images") -> Tensor:
    """``[N, E]`` normalized contrastive image features of ``[b, 3, H, W]`` batches (a progress bar
    counts the ``n_images`` images under ``desc``; None: no bar)."""
    if desc is not None:
        batches = progress.track(batches, desc, total=n_images, unit="image", weight=len)
    return torch.cat([contrastive_feat(encoder.encode_image(batch.to(device))).float() for batch in batches])


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``top{k}`` accuracy in percent of ``[N, C]`` scores against ``[N]`` labels (``k`` capped at
    ``C``), and ``mean_class_acc``: top-1 accuracy averaged over the classes present.

    Raises:
        NonFiniteError: a score is NaN or infinite (``topk`` would rank NaN first).
    """
    require_finite_scores(logits, "zero-shot classification scores")
    labels = labels.to(logits.device)
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [N, k]
    hits = ranked == labels[:, None]
    out = {f"top{k}": 100.0 * hits[:, :k].any(1).double().mean().item() for k in ks}
    top1 = hits[:, 0].double()
    present = labels.unique()
    out["mean_class_acc"] = 100.0 * torch.stack([top1[labels == c].mean() for c in present]).mean().item()
    return out
