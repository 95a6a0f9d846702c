"""Reshaping position tables for a recipe's resolution or text length: ViT absolute position grids
(bicubic, as ALBEF's ``interpolate_pos_embed``), VLMo's relative-position bias table (the image
offsets by BEiT's geometric-progression interpolation, the [CLS], cross-modal and text buckets copied
unchanged) and BERT position tables (truncated, as VLMo's loader does)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlkit.nn.vit import resize_pos_embed


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def resize_position_grid(value: Tensor, shape: torch.Size) -> tuple[Tensor, str] | None:
    """``[1, 1+s², D]`` → ``[1, 1+g², D]`` (the [CLS] row kept, the grid resized bicubically)."""
    if value.ndim != 3 or len(shape) != 3 or value.shape[0] != shape[0] or value.shape[2] != shape[2]:
        return None
    src, dst = _square_side(value.shape[1] - 1), _square_side(shape[1] - 1)
    if src is None or dst is None:
        return None
    out = resize_pos_embed(value.float(), dst).to(value.dtype)
    return out, f"position grid interpolated {src}×{src} → {dst}×{dst} (bicubic)"


def truncate_positions(value: Tensor, shape: torch.Size) -> tuple[Tensor, str] | None:
    """``[N, D]`` → ``[M, D]`` with ``M < N``: the first ``M`` positions (VLMo's loader does the same)."""
    if value.ndim != 2 or len(shape) != 2 or value.shape[1] != shape[1] or value.shape[0] <= shape[0]:
        return None
    return value[: shape[0]].clone(), f"first {shape[0]} of {value.shape[0]} positions kept"


def beit_offsets(src: int, dst: int) -> list[float]:
    """Where the ``src`` (odd) offsets of a relative-position axis sit on the ``dst``-wide target axis
    (BEiT's rule when growing): symmetric about 0, with gaps growing geometrically (ratio ``q`` found by
    bisection) so that the outermost source offset lands at about ``dst // 2``."""
    half_src, half_dst = src // 2, dst // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if (1.0 - q**half_src) / (1.0 - q) > half_dst:  # 1 + q + ... + q^(half_src-1)
            hi = q
        else:
            lo = q
    right, position = [], 1.0
    for i in range(half_src):
        right.append(position)
        position += q ** (i + 1)
    return [-p for p in reversed(right)] + [0.0] + right


def _resize_offsets(table: Tensor, src: int, dst: int) -> tuple[Tensor, str]:
    """Columns of ``table`` ``[src², C]`` as ``src × src`` offset grids, resampled to ``dst × dst``."""
    target = torch.arange(-(dst // 2), dst // 2 + 1, dtype=torch.float64)
    if dst > src:
        points = torch.tensor(beit_offsets(src, dst), dtype=torch.float64)
        how = "interpolated on BEiT's geometric grid"
    else:
        points = torch.linspace(-(dst // 2), dst // 2, src, dtype=torch.float64)
        how = "resampled on an evenly shrunk grid"
    from scipy.interpolate import RectBivariateSpline  # a declared requirement: the method never depends on the setup

    grid, columns = points.numpy(), []
    for column in table.double().unbind(1):
        spline = RectBivariateSpline(grid, grid, column.view(src, src).numpy(), kx=3, ky=3, s=0)
        columns.append(torch.from_numpy(spline(target.numpy(), target.numpy())).reshape(-1))
    return torch.stack(columns, dim=1), how + ", cubic spline (as VLMo's interp2d)"


def resize_relative_table(value: Tensor, shape: torch.Size, text_span: int) -> tuple[Tensor, str] | None:
    """VLMo's table ``[(2S-1)² + 3 + 2T + 2, H·L]`` for an ``S × S`` patch grid → the ``W × W`` grid of
    ``shape``. Rows ``[0, (2S-1)²)`` (patch offsets) are resampled per column; the other rows (image
    [CLS], cross-modal and text buckets) do not depend on the grid and are copied.

    Args:
        value: the checkpoint's table.
        shape: the recipe's table shape.
        text_span: ``T`` (``max_text_len_of_initckpt``), equal on both sides.
    """
    if value.ndim != 2 or len(shape) != 2 or value.shape[1] != shape[1]:
        return None
    others = 3 + 2 * text_span + 2  # image [CLS] (3), then the cross-modal and text buckets (2T + 2)
    src, dst = _square_side(value.shape[0] - others), _square_side(shape[0] - others)
    if src is None or dst is None or src % 2 == 0 or dst % 2 == 0:
        return None
    patches, how = _resize_offsets(value[: src * src], src, dst)
    out = torch.cat((patches.to(value.dtype), value[src * src:]), dim=0)
    old, new = (src + 1) // 2, (dst + 1) // 2
    return out, (f"relative-position table resized for a {old}×{old} → {new}×{new} patch grid (image offsets {how}; "
                 "[CLS], cross-modal and text rows copied)")
