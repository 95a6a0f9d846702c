"""Relative-position bias indices of VLMo (BEiT buckets for images, 1-D distances for text).

One table ``[num_buckets, heads * layers]`` holds the bias of every layer; an index matrix
``[N, N]`` names the bucket (row of the table) of every (query, key) pair of a token layout, and
:func:`relative_position_bias` gathers all layers at once. The bucket numbering follows VLMo so
that its ``relative_position_bias_table`` loads unchanged:

- ``[0, (2W-1)²)``: image patch pairs, by 2-D offset on the ``W × W`` patch grid (BEiT).
- ``I-3``, ``I-2``, ``I-1`` with ``I = (2W-1)² + 3``: image [CLS] as query, as key, and both.
- ``I``: text query → image key; ``I + 1``: image query → text key.
- ``I + 2 + (T - 2) + (j - i)`` with ``T = max_text_len_of_initckpt``: text token ``i`` (query)
  → text token ``j`` (key), both past [CLS].
- ``A-3``, ``A-2``, ``A-1`` with ``A = I + 2T + 2``: text [CLS] as query, as key, and both.

Text buckets depend only on ``j - i`` and [CLS], so the index of a layout with ``L`` text tokens
is the leading ``L × L`` block of the index for any longer text: build it for the actual length.
Fused layouts are ``[text (L), image (1 + W²)]``, VLMo's order.

Everything here is built with tensor ops on the requested device (no host round trip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def num_image_buckets(grid: int) -> int:
    """``(2W-1)² + 3``: patch offsets and the three image [CLS] buckets (VLMo ``num_relative_distance``)."""
    return (2 * grid - 1) ** 2 + 3


def num_buckets(grid: int, max_text_len_of_initckpt: int = 196) -> int:
    """Rows of the bias table (VLMo ``all_num_relative_distance``): 1126 at grid 14 (224 px / 16)."""
    return num_image_buckets(grid) + 2 * max_text_len_of_initckpt + 2


def image_relative_position_index(grid: int, *, device: torch.device | str | None = None) -> Tensor:
    """Buckets of an image layout ``[CLS, W² patches (row-major)]``.

    Args:
        grid: patches per side ``W``.
        device: where to build the index.

    Returns:
        long ``[1 + W², 1 + W²]``.
    """
    size = num_image_buckets(grid)
    coords = torch.arange(grid, device=device)
    rows = coords.repeat_interleave(grid)  # [W²] patch row h
    cols = coords.repeat(grid)  # [W²] patch column w
    d_row = rows[:, None] - rows[None, :] + grid - 1  # query minus key, shifted to [0, 2W-2]
    d_col = cols[:, None] - cols[None, :] + grid - 1
    patches = d_row * (2 * grid - 1) + d_col
    index = F.pad(patches, (1, 0, 1, 0))
    index[0, :] = size - 3  # image [CLS] as query
    index[:, 0] = size - 2  # image [CLS] as key
    index[0, 0] = size - 1
    return index


def text_relative_position_index(length: int, grid: int, max_text_len_of_initckpt: int = 196, *,
                                 device: torch.device | str | None = None) -> Tensor:
    """Buckets of a text layout ``[CLS, length - 1 tokens]``.

    Args:
        length: text tokens ``L`` including [CLS] (padding included: it is masked, not removed).
        grid: patches per side ``W`` (text buckets follow the image ones in the table).
        max_text_len_of_initckpt: ``T``; distances ``|j - i| ≤ T - 2`` have buckets.
        device: where to build the index.

    Returns:
        long ``[L, L]``.

    Raises:
        ValueError: ``L > T`` (a distance would fall outside the text buckets).
    """
    if not 1 <= length <= max_text_len_of_initckpt:
        raise ValueError(f"text of {length} tokens: relative positions cover 1 to {max_text_len_of_initckpt} "
                         "tokens (max_text_len_of_initckpt)")
    total = num_buckets(grid, max_text_len_of_initckpt)
    positions = torch.arange(length, device=device)
    offset = num_image_buckets(grid) + 2 + (max_text_len_of_initckpt - 2)
    index = offset + positions[None, :] - positions[:, None]  # key minus query
    index[0, :] = total - 3  # text [CLS] as query
    index[:, 0] = total - 2  # text [CLS] as key
    index[0, 0] = total - 1
    return index


def fused_relative_position_index(text_len: int, grid: int, max_text_len_of_initckpt: int = 196, *,
                                  device: torch.device | str | None = None) -> Tensor:
    """Buckets of VLMo's fused layout ``[text (L), image (1 + W²)]``.

    Returns:
        long ``[L + 1 + W², L + 1 + W²]``: the text and image indices on the diagonal blocks, bucket
        ``I`` for text → image and ``I + 1`` for image → text.
    """
    text = text_relative_position_index(text_len, grid, max_text_len_of_initckpt, device=device)
    image = image_relative_position_index(grid, device=device)
    image_len = image.shape[0]
    cross = num_image_buckets(grid)
    top = torch.cat((text, text.new_full((text_len, image_len), cross)), dim=1)
    bottom = torch.cat((image.new_full((image_len, text_len), cross + 1), image), dim=1)
    return torch.cat((top, bottom), dim=0)


def relative_position_bias(table: Tensor, index: Tensor, layers: int) -> Tensor:
    """Every layer's bias for one layout, gathered in one op.

    Args:
        table: ``[num_buckets, heads * layers]``; columns ``i*H .. (i+1)*H - 1`` belong to layer ``i``.
        index: long ``[N, N]`` buckets of the layout.
        layers: number of layers sharing the table.

    Returns:
        ``[layers, H, N, N]`` (contiguous; gradients flow into ``table``).
    """
    bias = F.embedding(index, table)  # [N, N, H * layers]
    return bias.permute(2, 0, 1).unflatten(0, (layers, -1)).contiguous()
