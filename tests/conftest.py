"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlkit.data.synthetic import SynthConfig, generate
from vlkit.data.synthetic.scene import Scene, sample_split

SMALL_SYNTHETIC = SynthConfig(seed=5, train_images=40, val_images=8, test_images=8)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset folder (40 / 8 / 8 images, with phrases and hard negatives)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SMALL_SYNTHETIC)
    return out


def training_scenes(count: int, seed: int) -> list[Scene]:
    """``count`` scenes of the synthetic training split (1–4 objects, half of them twins)."""
    return sample_split("train", count, 0, seed=seed, image_size=64, min_objects=1, max_objects=4, twin_fraction=0.5)
