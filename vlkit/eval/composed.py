"""Composed-query retrieval as ALIGN shows it: a query embedding made of an image embedding plus and
minus text embeddings (each L2-normalized, summed, re-normalized), ranked against a gallery of image
embeddings by cosine similarity; and the contact sheet that shows the result."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from vlkit.eval.finite import require_finite_scores


def compose(image: Tensor | None, plus: Sequence[Tensor] = (), minus: Sequence[Tensor] = ()) -> Tensor:
    """``[E]`` query: ``normalize(norm(image) + Σ norm(plus) − Σ norm(minus))``; at least one part."""
    parts = ([F.normalize(image.float(), dim=-1)] if image is not None else []) + \
        [F.normalize(t.float(), dim=-1) for t in plus] + [-F.normalize(t.float(), dim=-1) for t in minus]
    if not parts:
        raise ValueError("a query needs an image or a text")
    return F.normalize(torch.stack(parts).sum(0), dim=-1)


def rank(gallery: Tensor, query: Tensor, k: int) -> tuple[list[int], list[float]]:
    """Indices and cosine scores of the ``k`` gallery rows ``[N, E]`` nearest to ``query [E]``."""
    scores = F.normalize(gallery.float(), dim=-1) @ query
    require_finite_scores(scores, "composed retrieval: gallery scores")
    top = scores.topk(min(k, gallery.shape[0]))
    return top.indices.tolist(), top.values.tolist()


def contact_sheet(query_image: Image.Image | None, query_text: str, results: Sequence[tuple[Image.Image, str]], *,
                  columns: int = 8, thumb: int = 128) -> Image.Image:
    """A PNG-ready sheet: the query (image, if any, and its text) in the first row, then the results in
    rank order, each labelled (rank, score)."""
    pad, label = 6, 16
    rows = 1 + -(-len(results) // columns)
    sheet = Image.new("RGB", (columns * (thumb + pad) + pad, rows * (thumb + label + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    if query_image is not None:
        sheet.paste(query_image.convert("RGB").resize((thumb, thumb), Image.Resampling.BICUBIC), (pad, pad))
        draw.rectangle([pad - 2, pad - 2, pad + thumb + 1, pad + thumb + 1], outline=(220, 0, 0), width=2)
        x += thumb + pad
    draw.text((x, pad + thumb // 2 - 6), f"query: {query_text}", fill=(0, 0, 0))
    for i, (image, caption) in enumerate(results):
        row, col = 1 + i // columns, i % columns
        left, top = pad + col * (thumb + pad), pad + row * (thumb + label + pad)
        sheet.paste(image.convert("RGB").resize((thumb, thumb), Image.Resampling.BICUBIC), (left, top))
        draw.text((left, top + thumb + 2), caption, fill=(0, 0, 0))
    return sheet
