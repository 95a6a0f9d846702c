"""Shape presets shared by the encoders' ``SIZES`` tables (nested recipe defaults)."""

from __future__ import annotations

from typing import Any

# ViT shapes. ALBEF pre-trains at 256 px (16×16 patches + CLS = 257 tokens).
TINY_VIT: dict[str, Any] = {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4}
BASE_VIT: dict[str, Any] = {"image_size": 256, "patch_size": 16, "dim": 768, "depth": 12, "heads": 12}
LARGE_VIT: dict[str, Any] = {"image_size": 256, "patch_size": 16, "dim": 1024, "depth": 24, "heads": 16}

# BERT shapes (vocabulary: bert-base-uncased, 30522 WordPieces).
TINY_BERT: dict[str, Any] = {"dim": 64, "layers": 4, "heads": 4, "intermediate": 256, "max_positions": 64}
BASE_BERT: dict[str, Any] = {"dim": 768, "layers": 12, "heads": 12, "intermediate": 3072, "max_positions": 512}
LARGE_BERT: dict[str, Any] = {"dim": 1024, "layers": 24, "heads": 16, "intermediate": 4096, "max_positions": 512}
