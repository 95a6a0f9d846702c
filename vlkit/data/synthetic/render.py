"""Drawing scenes with PIL: a low-contrast texture, then flat-coloured shapes drawn at a higher
resolution and box-filtered down (anti-aliased edges). Rendering is a pure function of the scene."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from vlkit.data.synthetic.lexicon import COLORS
from vlkit.data.synthetic.scene import Background, Obj, Scene

SUPERSAMPLE = 4


def background_array(bg: Background, size: int) -> np.ndarray:
    """The ``[size, size, 3]`` uint8 texture (variation of at most ``±amplitude`` around ``base``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    along = [xx, yy, xx + yy, xx - yy][bg.orientation]
    if bg.kind == "flat":
        pattern = np.zeros((size, size))
    elif bg.kind == "noise":
        rng = np.random.default_rng(bg.seed)
        coarse = rng.uniform(-1, 1, size=(size // 4 + 2, size // 4 + 2))
        pattern = np.kron(coarse, np.ones((4, 4)))[:size, :size] * 0.6 + rng.uniform(-1, 1, (size, size)) * 0.4
    elif bg.kind == "stripes":
        pattern = np.where((along // bg.period) % 2 == 0, 1.0, -1.0)
    elif bg.kind == "gradient":
        pattern = 2 * (along - along.min()) / max(1.0, float(along.max() - along.min())) - 1
    elif bg.kind == "checker":
        pattern = np.where(((xx // bg.period) + (yy // bg.period)) % 2 == 0, 1.0, -1.0)
    else:
        raise ValueError(f"unknown background {bg.kind!r}")
    base = np.array(bg.base, dtype=np.float64)
    return np.clip(base + bg.amplitude * pattern[..., None], 0, 255).round().astype(np.uint8)


def shape_outline(o: Obj, scale: int) -> tuple[str, list[tuple[float, float]]]:
    """``(primitive, points)`` of an object in supersampled pixels: ``ellipse``/``rect`` take a box
    ``[(left, top), (right, bottom)]``, ``polygon`` a vertex list, ``cross`` the two bar boxes."""
    left, top, right, bottom = (v * scale for v in o.box())
    right, bottom = right - 1, bottom - 1
    w = right - left
    cx, cy = (left + right) / 2, (top + bottom) / 2
    if o.shape == "circle":
        return "ellipse", [(left, top), (right, bottom)]
    if o.shape == "square":  # inset so that its area is close to the circle's
        d = 0.07 * w
        return "rect", [(left + d, top + d), (right - d, bottom - d)]
    if o.shape == "triangle":
        return "polygon", [(cx, top), (right, bottom), (left, bottom)]
    if o.shape == "diamond":
        return "polygon", [(cx, top), (right, cy), (cx, bottom), (left, cy)]
    if o.shape == "cross":
        t = 0.18 * w
        return "cross", [(left, cy - t), (right, cy + t), (cx - t, top), (cx + t, bottom)]
    raise ValueError(f"unknown shape {o.shape!r}")


def draw_object(draw: ImageDraw.ImageDraw, o: Obj, scale: int) -> None:
    """Draw one object in its flat colour."""
    fill = COLORS[o.color]
    kind, pts = shape_outline(o, scale)
    if kind == "ellipse":
        draw.ellipse(pts, fill=fill)
    elif kind == "rect":
        draw.rectangle(pts, fill=fill)
    elif kind == "polygon":
        draw.polygon(pts, fill=fill)
    else:
        draw.rectangle(pts[:2], fill=fill)
        draw.rectangle(pts[2:], fill=fill)


def render(scene: Scene, *, only: int | None = None, blank: bool = False) -> Image.Image:
    """The RGB image of a scene (``only``: draw that object alone; ``blank``: black background)."""
    size, scale = scene.size, SUPERSAMPLE
    bg = np.zeros((size, size, 3), np.uint8) if blank else background_array(scene.background, size)
    big = Image.fromarray(bg, "RGB").resize((size * scale, size * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    for i, o in enumerate(scene.objects):
        if only is None or only == i:
            draw_object(draw, o, scale)
    return big.resize((size, size), Image.Resampling.BOX)


def png_bytes(scene: Scene) -> bytes:
    """The scene's image encoded as PNG (deterministic bytes)."""
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
