"""Contrastive similarities and the negatives drawn from them (image-text matching)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vlkit.core.encodings import ImageEncoding, TextEncoding


@dataclass
class Similarity:
    """Contrastive logits (temperature applied) that hard-negative samplers read.

    Attributes:
        i2t: ``[B, C]`` image b against text j (``C = B`` in-batch, ``N`` over the global batch).
        t2i: ``[B, C]`` text b against image j.
    """

    i2t: Tensor
    t2i: Tensor


@dataclass
class Negatives:
    """Drawn negatives, each ``[B]``.

    Attributes:
        image_index: row of the negative image for text ``b``.
        text_index: row of the negative text for image ``b``.
        image_valid: 1.0 where ``image_index[b]`` is a real negative, 0.0 for a placeholder.
        text_valid: likewise for ``text_index``.
        images: where ``image_index`` points (e.g. negatives gathered from other ranks and
            re-encoded); None: the step's own images.
        texts: likewise for ``text_index``.
    """

    image_index: Tensor
    text_index: Tensor
    image_valid: Tensor
    text_valid: Tensor
    images: ImageEncoding | None = None
    texts: TextEncoding | None = None
