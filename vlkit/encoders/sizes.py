"""Shape presets shared by the encoders' ``SIZES`` tables (nested recipe defaults)."""

from __future__ import annotations

from typing import Any

# Tiny widths scale the init std as 0.02·√(768/64) ≈ 0.07 so activations match the base models'
# (0.02 is tuned for width 768; at width 64 attention would start uniform and residual branches tiny).
TINY_INIT_STD = 0.07

# ViT shapes. ALBEF pre-trains at 256 px (16×16 patches + CLS = 257 tokens).
TINY_VIT: dict[str, Any] = {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4,
                            "init_std": TINY_INIT_STD}
BASE_VIT: dict[str, Any] = {"image_size": 256, "patch_size": 16, "dim": 768, "depth": 12, "heads": 12}
LARGE_VIT: dict[str, Any] = {"image_size": 256, "patch_size": 16, "dim": 1024, "depth": 24, "heads": 16}

# BERT shapes (vocabulary: bert-base-uncased, 30522 WordPieces).
TINY_BERT: dict[str, Any] = {"dim": 64, "layers": 4, "heads": 4, "intermediate": 256, "max_positions": 64,
                             "init_std": TINY_INIT_STD}
BASE_BERT: dict[str, Any] = {"dim": 768, "layers": 12, "heads": 12, "intermediate": 3072, "max_positions": 512}
LARGE_BERT: dict[str, Any] = {"dim": 1024, "layers": 24, "heads": 16, "intermediate": 4096, "max_positions": 512}
