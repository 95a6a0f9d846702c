"""Image-text retrieval: contrastive similarity over the whole gallery, then (fusion encoders) ITM
re-ranking of each query's top ``k`` candidates in batches of pairs, with ALBEF's score rule (the raw
ITM logit of class 1 at the top-k, −100 elsewhere) and metric names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vlkit.encoders.base import Encoder, ImageEncoding, TextEncoding


@dataclass
class EncodedGallery:
    """Encodings of a gallery: images ``[N_i, ...]`` and texts ``[N_t, ...]`` (padded to one length)."""

    images: ImageEncoding
    texts: TextEncoding


def concat_encodings(parts: list[Any]) -> Any:
    """Concatenate :class:`ImageEncoding` / :class:`TextEncoding` batches along the batch axis."""
    cls = type(parts[0])
    return cls(**{f.name: None if getattr(parts[0], f.name) is None else torch.cat([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls)})


@torch.no_grad()
def encode_gallery(encoder: Encoder, images: Sequence[Tensor] | torch.utils.data.DataLoader, input_ids: Tensor,
                   attention_mask: Tensor, *, batch_size: int, device: torch.device) -> EncodedGallery:
    """Encode every image (an iterable of ``[b, 3, H, W]`` batches) and every text (``[N_t, L]``)."""
    image_parts = [encoder.encode_image(batch.to(device)) for batch in images]
    text_parts = [encoder.encode_text(input_ids[i:i + batch_size].to(device),
                                      attention_mask[i:i + batch_size].to(device))
                  for i in range(0, input_ids.shape[0], batch_size)]
    return EncodedGallery(concat_encodings(image_parts), concat_encodings(text_parts))


ITMScorer = Callable[[Tensor], Tensor]
"""Fused [CLS] ``[P, D]`` → match logit ``[P]``."""


@torch.no_grad()
def itm_rerank(encoder: Encoder, gallery: EncodedGallery, sims: Tensor, itm_logit: ITMScorer, *, k: int,
               pair_batch: int) -> tuple[Tensor, Tensor]:
    """ALBEF's re-ranking: scores ``[N_i, N_t]`` (image → text) and ``[N_t, N_i]`` (text → image) that are
    the ITM logit on each query's top-``k`` contrastive candidates and −100 elsewhere."""
    n_img, n_txt = sims.shape
    i2t = torch.full((n_img, n_txt), -100.0, device=sims.device)
    t2i = torch.full((n_txt, n_img), -100.0, device=sims.device)
    k_i2t, k_t2i = min(k, n_txt), min(k, n_img)
    per_chunk = max(1, pair_batch // max(k_i2t, k_t2i))
    for start in range(0, n_img, per_chunk):  # image queries, `per_chunk` at a time
        rows = torch.arange(start, min(start + per_chunk, n_img), device=sims.device)
        top = sims[rows].topk(k_i2t, dim=1).indices  # [c, k]
        images = gallery.images.select(rows)
        fused = encoder.fuse(images, gallery.texts, image_index=torch.arange(len(rows), device=rows.device)
                             .repeat_interleave(k_i2t), text_index=top.flatten(), image_kv=encoder.image_kv(images))
        i2t[rows[:, None], top] = itm_logit(fused.cls).view(len(rows), k_i2t).float()
    for start in range(0, n_txt, per_chunk):  # text queries
        rows = torch.arange(start, min(start + per_chunk, n_txt), device=sims.device)
        top = sims[:, rows].T.topk(k_t2i, dim=1).indices  # [c, k] image candidates per text
        images = gallery.images.select(top.flatten())
        fused = encoder.fuse(images, gallery.texts, text_index=rows.repeat_interleave(k_t2i),
                             image_kv=encoder.image_kv(images))
        t2i[rows[:, None], top] = itm_logit(fused.cls).view(len(rows), k_t2i).float()
    return i2t, t2i


def recall_metrics(score_i2t: Tensor, score_t2i: Tensor, img2txt: list[list[int]],
                   txt2img: list[int]) -> dict[str, float]:
    """ALBEF's ``itm_eval``: text rank = best rank over an image's captions; percentages."""
    order_i2t = score_i2t.argsort(dim=1, descending=True).cpu()
    order_t2i = score_t2i.argsort(dim=1, descending=True).cpu()
    position_i2t = torch.empty_like(order_i2t)
    position_i2t.scatter_(1, order_i2t, torch.arange(order_i2t.shape[1]).expand_as(order_i2t).contiguous())
    position_t2i = torch.empty_like(order_t2i)
    position_t2i.scatter_(1, order_t2i, torch.arange(order_t2i.shape[1]).expand_as(order_t2i).contiguous())
    text_ranks = torch.tensor([int(position_i2t[i, gt].min()) for i, gt in enumerate(img2txt)])
    image_ranks = position_t2i[torch.arange(len(txt2img)), torch.tensor(txt2img)]

    def recall(ranks: Tensor, k: int) -> float:
        return 100.0 * (ranks < k).double().mean().item()

    out = {f"txt_r{k}": recall(text_ranks, k) for k in (1, 5, 10)}
    out.update({f"img_r{k}": recall(image_ranks, k) for k in (1, 5, 10)})
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


@torch.no_grad()
def evaluate_retrieval(encoder: Encoder, gallery: EncodedGallery, img2txt: list[list[int]], txt2img: list[int], *,
                       itm_head: nn.Module | None, k_test: int, pair_batch: int) -> dict[str, float]:
    """Recall metrics of the gallery: ITC only (dual encoders, ``k_test == 0``, no ITM head), or ITC
    then ITM re-ranking of the top ``k_test``. Also reports ``itc_*`` recalls before re-ranking."""
    sims = gallery.images.feat.float() @ gallery.texts.feat.float().T
    itc = recall_metrics(sims, sims.T, img2txt, txt2img)
    metrics = dict(itc)
    if itm_head is not None and encoder.supports_fusion and k_test > 0:
        i2t, t2i = itm_rerank(encoder, gallery, sims, lambda cls: itm_head(cls)[:, 1], k=k_test,
                              pair_batch=pair_batch)
        metrics = recall_metrics(i2t, t2i, img2txt, txt2img)
    metrics.update({f"itc_{k}": v for k, v in itc.items()})
    metrics.update(n_images=float(len(img2txt)), n_texts=float(len(txt2img)))
    return metrics
