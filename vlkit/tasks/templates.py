"""Prompt templates for zero-shot classification (ALIGN / CLIP protocol: every class name is put into
every template, the normalized text embeddings are averaged per class). ``{}`` marks the class name.

- ``photo``: generic prompts for photographs of objects (ImageNet-style class names).
- ``plain``: the class name alone.
- ``synthetic_color`` / ``synthetic_shape``: the synthetic world's phrasing, for colour or shape classes.
"""

from __future__ import annotations

from vlkit.core.errors import ConfigError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a cropped photo of a {}.",
        "a bright photo of a {}.",
        "a dark photo of a {}.",
        "a blurry photo of a {}.",
        "a low resolution photo of a {}.",
        "a good photo of a {}.",
        "a photo of a small {}.",
        "a photo of a large {}.",
        "a picture of a {}.",
        "an image of a {}.",
        "a snapshot of the {}.",
        "a drawing of a {}.",
        "a rendering of a {}.",
        "art of the {}.",
        "itap of a {}.",
    ),
    "plain": ("{}",),
    "synthetic_color": (
        "a large {} object",
        "an image with a big {} shape",
        "there is a {} object",
        "the big {} shape",
    ),
    "synthetic_shape": (
        "a large {}",
        "an image with a big {}",
        "there is a {}",
        "the big {}",
    ),
}


def resolve_templates(templates: str | list[str]) -> list[str]:
    """A shipped set by name, or the given list; every template must contain ``{}`` once."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ConfigError(f"no template set `{templates}`; shipped: {', '.join(TEMPLATES)} (or give a list)")
        return list(TEMPLATES[templates])
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ConfigError(f"templates must be a non-empty list, each with one `{{}}` for the class name: {bad}")
    return list(templates)
