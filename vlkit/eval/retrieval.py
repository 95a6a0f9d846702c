"""Image-text retrieval: contrastive similarity over the whole gallery, then (fusion encoders) ITM
re-ranking of each query's top ``k`` candidates in batches of pairs, with ALBEF's score rule (the raw
ITM logit of class 1 at the top-k, −100 elsewhere) and metric names.

The gallery is scored in chunks of queries: no ``N_i × N_t`` matrix is ever held (5k images × 25k
texts would need 0.5 GB per score matrix and twice that for a sort), only ``chunk × N`` rows, from
which the ground truth's rank is counted directly. Ranks break ties by gallery order (a stable
descending sort), so ALBEF's −100 outside the top-k ranks those candidates after it, deterministically.

Ties, against ALBEF: of two gallery items with the same score, vlkit ranks the **earlier** one (lower
index) first, while ALBEF's ``itm_eval`` (``np.argsort(score)[::-1]``: ascending, then reversed) ranks
the **later** one first. Recalls differ only where a ground truth ties with another candidate at the
cut-off; with ITM re-ranking every candidate outside the top ``k_test`` ties at −100, so only ranks of
``k_test`` and beyond are affected, never R@1/5/10 when ``k_test`` ≥ 10 (and the re-ranked logits stay
above −100).
The gallery's token encodings may be stored off the device (``store``): each re-ranking batch moves
only the rows it fuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from vlkit import dist, progress
from vlkit.core.errors import NonFiniteError
from vlkit.encoders.base import Encoder, ImageEncoding, TextEncoding, contrastive_feat
from vlkit.eval.finite import ADVICE, require_finite_scores

E = TypeVar("E", ImageEncoding, TextEncoding)


@dataclass
class EncodedGallery:
    """Encodings of a gallery: images ``[N_i, ...]`` and texts ``[N_t, ...]`` (padded to one length)."""

    images: ImageEncoding
    texts: TextEncoding


@torch.no_grad()
def encode_gallery(encoder: Encoder, images: Iterable[Tensor], input_ids: Tensor, attention_mask: Tensor, *,
                   batch_size: int, device: torch.device, store: torch.device | None = None,
                   n_images: int | None = None) -> EncodedGallery:
    """Encode every image (an iterable of ``[b, 3, H, W]`` batches; ``n_images`` of them in all, for the
    progress bar) and every text (``[N_t, L]``), keeping the encodings on ``store`` (default: ``device``)."""
    store = store or device
    image_parts = [encoder.encode_image(batch.to(device)).to(store)
                   for batch in progress.track(images, "encoding images", total=n_images, unit="image",
                                               weight=len)]
    text_parts = [encoder.encode_text(input_ids[i:i + batch_size].to(device),
                                      attention_mask[i:i + batch_size].to(device)).to(store)
                  for i in progress.track(range(0, input_ids.shape[0], batch_size), "encoding texts",
                                          total=input_ids.shape[0], unit="text",
                                          weight=lambda i: min(batch_size, input_ids.shape[0] - i))]
    return EncodedGallery(ImageEncoding.cat(image_parts), TextEncoding.cat(text_parts))


UNRANKED = 2**40
"""The rank of a positive whose score is NaN: beyond every recall cutoff, whatever the gallery size."""

ITMScorer = Callable[[Tensor], Tensor]
"""Fused [CLS] ``[P, D]`` → match logit ``[P]``."""


def ground_truth_ranks(scores: Tensor, positives: Sequence[Sequence[int]]) -> Tensor:
    """``[c]`` 0-based rank of each query's best-ranked positive among ``scores [c, N]`` (descending, ties
    broken by lower column first, as a stable sort): ``#{s > s_p} + #{s = s_p, column < p}``.

    ALBEF's ``itm_eval`` breaks ties the other way (``np.argsort(score)[::-1]`` puts the higher column
    first: ``#{s > s_p} + #{s = s_p, column > p}``); the two agree whenever the positive's score is unique.

    A NaN positive is never a hit: it gets :data:`UNRANKED`, beyond every recall cutoff (nothing compares
    greater than NaN, so the count above would make it rank 0). (:func:`evaluate_retrieval` refuses
    non-finite scores outright.)"""
    width = max(len(p) for p in positives)
    columns = torch.tensor([list(p) + [p[0]] * (width - len(p)) for p in positives], device=scores.device)  # [c, G]
    order = torch.arange(scores.shape[1], device=scores.device)
    best = torch.full((scores.shape[0],), UNRANKED, dtype=torch.long, device=scores.device)
    for g in range(width):
        column = columns[:, g : g + 1]  # [c, 1]
        value = scores.gather(1, column)
        rank = (scores > value).sum(1) + ((scores == value) & (order[None] < column)).sum(1)
        rank = torch.where(value[:, 0].isnan(), UNRANKED, rank)
        best = torch.minimum(best, rank)
    return best.cpu()


def recalls_from_ranks(text_ranks: Tensor, image_ranks: Tensor) -> dict[str, float]:
    """ALBEF's ``itm_eval`` keys (percent) from the text ranks ``[N_i]`` and image ranks ``[N_t]``.

    The ranks are :func:`ground_truth_ranks`', whose ties rank the earlier gallery item first (ALBEF's the
    later one): where a positive ties with another candidate, a recall here can be higher than ALBEF's."""

    def recall(ranks: Tensor, k: int) -> float:
        return 100.0 * (ranks < k).double().mean().item()

    out = {f"txt_r{k}": recall(text_ranks, k) for k in (1, 5, 10)}
    out.update({f"img_r{k}": recall(image_ranks, k) for k in (1, 5, 10)})
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def recall_metrics(score_i2t: Tensor, score_t2i: Tensor, img2txt: list[list[int]],
                   txt2img: list[int]) -> dict[str, float]:
    """ALBEF's ``itm_eval`` on whole score matrices ``[N_i, N_t]`` and ``[N_t, N_i]``: text rank = best
    rank over an image's captions; percentages."""
    return recalls_from_ranks(ground_truth_ranks(score_i2t, img2txt),
                              ground_truth_ranks(score_t2i, [[i] for i in txt2img]))


@dataclass
class _Reranker:
    """ITM scores of query rows against their top-``k`` candidates, in batches of about ``pair_batch`` pairs."""

    encoder: Encoder
    gallery: EncodedGallery
    itm_logit: ITMScorer
    pair_batch: int
    device: torch.device
    done: Callable[[int], object] = lambda pairs: None
    """Told the number of pairs scored after each batch (the progress bar)."""

    def scores(self, rows: Tensor, top: Tensor, *, image_queries: bool) -> Tensor:
        """``[c, k]`` logits of query rows ``rows [c]`` (images, or texts) with their candidates ``top [c, k]``."""
        k = top.shape[1]
        step = max(1, self.pair_batch // k)
        out = []
        for start in range(0, len(rows), step):
            queries, candidates = rows[start:start + step], top[start:start + step].flatten()
            image_rows, text_rows = (queries, candidates) if image_queries else (candidates, queries)
            images = self._take(self.gallery.images, image_rows)
            texts = self._take(self.gallery.texts, text_rows)
            repeat = {"image_index" if image_queries else "text_index":
                      torch.arange(len(queries), device=self.device).repeat_interleave(k)}
            fused = self.encoder.fuse(images, texts, image_kv=self.encoder.image_kv(images), **repeat)
            out.append(self.itm_logit(fused.cls).float().view(len(queries), k))
            self.done(len(queries) * k)
        return torch.cat(out)

    def _take(self, encoding: E, rows: Tensor) -> E:
        """Rows ``rows`` of a gallery encoding (wherever it is stored), on the compute device."""
        return encoding.select(rows.to(encoding.device)).to(self.device)


@torch.no_grad()
def evaluate_retrieval(encoder: Encoder, gallery: EncodedGallery, img2txt: list[list[int]], txt2img: list[int], *,
                       itm_head: nn.Module | None, k_test: int, pair_batch: int, query_chunk: int = 1024,
                       device: torch.device | None = None) -> dict[str, float]:
    """Recall metrics of the gallery: ITC only (dual encoders, ``k_test == 0``, no ITM head), or ITC
    then ITM re-ranking of the top ``k_test`` (ALBEF: re-ranked scores are the ITM logit at the top-k,
    −100 elsewhere). Also reports ``itc_*`` recalls before re-ranking. Queries are scored
    ``query_chunk`` at a time on ``device`` (default: where the features are).

    On several processes (every rank holding the whole encoded gallery, as ALBEF's evaluation), the
    query blocks are dealt out round-robin over the ranks and the ground truth's ranks summed over
    them (ALBEF splits the rows and all-reduces the score matrices); every rank returns the metrics.

    Raises:
        NonFiniteError: a contrastive feature or an ITM logit is NaN or infinite (no recall is computed).
    """
    device = device or contrastive_feat(gallery.images).device
    image_feat = contrastive_feat(gallery.images).to(device).float()  # [N_i, E]
    text_feat = contrastive_feat(gallery.texts).to(device).float()  # [N_t, E]
    require_finite_scores(image_feat, "retrieval: the gallery's contrastive image features")
    require_finite_scores(text_feat, "retrieval: the gallery's contrastive text features")
    n_img, n_txt = len(img2txt), len(txt2img)
    rerank = itm_head is not None and encoder.supports_fusion and k_test > 0
    me, world = dist.rank(), dist.world_size()
    with progress.bar(_rerank_pairs(n_img, n_txt, k_test, query_chunk, me, world) if rerank else None,
                      "re-ranking (ITM)", unit="pair", show=rerank) as bar:
        reranker = None
        if rerank and itm_head is not None:
            reranker = _Reranker(encoder, gallery, lambda cls: itm_head(cls)[:, 1], pair_batch, device, bar.update)
        ranks, nonfinite = _rank_blocks(image_feat, text_feat, img2txt, txt2img, reranker, k_test, query_chunk,
                                        device)
    if world > 1:
        everything = torch.cat([*ranks.values(), nonfinite[None]])
        torch.distributed.all_reduce(everything)  # each query's rank was written by exactly one rank
        *parts, nonfinite = everything.split([n_img, n_txt, n_img, n_txt, 1])
        ranks = dict(zip(ranks, parts, strict=True))
    if int(nonfinite):  # after the collective, so that every rank raises
        raise NonFiniteError(f"retrieval: {int(nonfinite)} contrastive similarities or ITM re-ranking logits are NaN "
                             f"or infinite; {ADVICE}")
    itc = recalls_from_ranks(ranks["itc_txt"], ranks["itc_img"])
    metrics = recalls_from_ranks(ranks["txt"], ranks["img"]) if rerank else dict(itc)
    metrics.update({f"itc_{k}": v for k, v in itc.items()})
    metrics.update(n_images=float(n_img), n_texts=float(n_txt))
    return metrics


def _rerank_pairs(n_img: int, n_txt: int, k_test: int, query_chunk: int, me: int, world: int) -> int:
    """The (query, candidate) pairs this rank re-ranks: ``min(k_test, N_keys)`` per query of its blocks."""
    total = 0
    for n_queries, n_keys in ((n_img, n_txt), (n_txt, n_img)):
        for block, start in enumerate(range(0, n_queries, query_chunk)):
            if block % world == me:
                total += (min(start + query_chunk, n_queries) - start) * min(k_test, n_keys)
    return total


def _rank_blocks(image_feat: Tensor, text_feat: Tensor, img2txt: list[list[int]], txt2img: list[int],
                 reranker: _Reranker | None, k_test: int, query_chunk: int,
                 device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
    """This rank's query blocks, both directions: the ground truth's ITC rank (``itc_txt``, ``itc_img``)
    and re-ranked rank (``txt``, ``img``) per query (0 for other ranks' queries), and the count of
    non-finite scores met."""
    n_img, n_txt = len(img2txt), len(txt2img)
    ranks = {name: torch.zeros(n, dtype=torch.long, device=device)
             for name, n in (("itc_txt", n_img), ("itc_img", n_txt), ("txt", n_img), ("img", n_txt))}
    me, world = dist.rank(), dist.world_size()
    nonfinite = torch.zeros((), dtype=torch.long, device=device)  # scores of this rank's queries; checked after
    for queries, keys, positives, name in ((image_feat, text_feat, img2txt, "txt"),
                                           (text_feat, image_feat, [[i] for i in txt2img], "img")):
        for block, start in enumerate(range(0, queries.shape[0], query_chunk)):
            if block % world != me:
                continue
            rows = torch.arange(start, min(start + query_chunk, queries.shape[0]), device=device)
            with torch.autocast(device.type, enabled=False):  # ranks from fp32 scores, under any autocast
                sims = queries[rows] @ keys.T  # [c, N_keys]
            nonfinite += (~torch.isfinite(sims)).sum()
            truth = positives[start:start + len(rows)]
            ranks[f"itc_{name}"][rows] = ground_truth_ranks(sims, truth).to(device)
            if reranker is None:
                continue
            top = sims.topk(min(k_test, keys.shape[0]), dim=1).indices  # [c, k]
            logits = reranker.scores(rows, top, image_queries=name == "txt")
            nonfinite += (~torch.isfinite(logits)).sum()
            scores = torch.full_like(sims, -100.0).scatter_(1, top, logits)
            ranks[name][rows] = ground_truth_ranks(scores, truth).to(device)
    return ranks, nonfinite
