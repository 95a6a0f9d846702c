"""The compositional probe: does the model score an image's true caption above the same words with two
attributes or a relation swapped? Reported for the contrastive score and for the ITM score."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from vlkit import progress
from vlkit.encoders.base import Encoder, ImageEncoding, contrastive_feat
from vlkit.eval.finite import require_finite_scores


@torch.no_grad()
def swap_accuracy(encoder: Encoder, images: ImageEncoding, true_text: tuple[Tensor, Tensor],
                  swapped_text: tuple[Tensor, Tensor], kinds: list[str], *, itm_head: nn.Module | None,
                  batch_size: int) -> dict[str, float]:
    """Accuracy of ``score(image, caption) > score(image, swapped)``.

    Args:
        encoder: the model's online encoder.
        images: encodings of the probe's images, one row per probe pair.
        true_text: (ids ``[N, L]``, mask) of the true captions.
        swapped_text: (ids ``[N, L']``, mask) of the swapped captions.
        kinds: ``[N]`` swap kind of each pair (e.g. ``attribute``, ``relation``).
        itm_head: the ITM head, if the model has one (fusion encoders).
        batch_size: pairs per forward.

    Returns:
        ``swap_acc_itc``, ``swap_acc_itm`` (when there is an ITM head), per-kind variants
        ``swap_acc_itm_<kind>`` / ``swap_acc_itc_<kind>``, ``n_swaps``, and ``swap_acc`` (ITM when
        available, else ITC).
    """
    device = contrastive_feat(images).device
    wins: dict[str, list[Tensor]] = defaultdict(list)
    n = len(kinds)
    for start in progress.track(range(0, n, batch_size), "swap probe", total=n, unit="pair",
                                weight=lambda start: min(batch_size, n - start)):
        rows = torch.arange(start, min(start + batch_size, n), device=device)
        chunk = images.select(rows)
        stop = start + batch_size
        texts = [encoder.encode_text(ids[start:stop].to(device), mask[start:stop].to(device))
                 for ids, mask in (true_text, swapped_text)]
        itc = [(contrastive_feat(chunk) * contrastive_feat(t)).sum(-1) for t in texts]
        require_finite_scores(torch.stack(itc), "swap probe: contrastive scores")
        wins["itc"].append(itc[0] > itc[1])
        if itm_head is not None and encoder.supports_fusion:
            kv = encoder.image_kv(chunk)
            itm = [itm_head(encoder.fuse(chunk, t, image_kv=kv).cls)[:, 1] for t in texts]
            require_finite_scores(torch.stack(itm), "swap probe: ITM scores")
            wins["itm"].append(itm[0] > itm[1])
    out: dict[str, float] = {"n_swaps": float(n)}
    kind_tensor = list(kinds)
    for score, parts in wins.items():
        hits = torch.cat(parts).float().cpu()
        out[f"swap_acc_{score}"] = hits.mean().item()
        for kind in sorted(set(kind_tensor)):
            mask = torch.tensor([k == kind for k in kind_tensor])
            out[f"swap_acc_{score}_{kind}"] = hits[mask].mean().item()
    out["swap_acc"] = out.get("swap_acc_itm", out["swap_acc_itc"])
    return out
