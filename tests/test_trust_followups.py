"""User-caused conditions in corners of vlkit end in the user-error family (one line, exit 2), never a
traceback: a batch with no usable sample, a foreign checkpoint file, pack settings, a synthetic seed out
of range, a hostile ablation grid; an error raised in a loader worker still prints as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlkit.ablate.grid import load_grid
from vlkit.cli import _error_line
from vlkit.core.errors import CheckpointError, ConfigError, DataError, RecipeError, UserError
from vlkit.data.collate import PretrainCollate
from vlkit.data.tools.pack import pack_json_dataset
from vlkit.recipe import load_recipe
from vlkit.weights import checkpoints


def test_an_error_from_a_loader_worker_prints_as_its_own_one_line_message() -> None:
    def fails(_: int) -> int:
        raise DataError("no sample of a batch of 4 could be used (each is named in bad_samples.jsonl)")

    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, num_workers=1, collate_fn=fails)
    with pytest.raises(DataError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # how torch hands it over
    assert _error_line(caught.value) == ("error: no sample of a batch of 4 could be used (each is named in "
                                         "bad_samples.jsonl)")


def test_a_batch_without_a_usable_sample_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no sample of a batch of 3 could be used"):
        PretrainCollate(tokenizer=None, max_length=8)([None, None, None])


def test_a_foreign_training_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    foreign = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="is not a vlkit training checkpoint"):
        checkpoints.load(foreign)


def test_pack_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shard_size must be positive"):
        pack_json_dataset([], tmp_path, tmp_path / "out", shard_size=0)


@pytest.mark.slow
def test_a_synthetic_seed_out_of_range_is_caught_at_recipe_check() -> None:
    with pytest.raises(RecipeError, match="seed"):
        load_recipe("albef/tiny", ["data.source.seed=-3"])


def test_an_ablation_grid_is_read_within_the_recipe_bounds(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True))
    grid = tmp_path / "grid.yaml"
    grid.write_text(bomb)
    with pytest.raises(UserError, match="expands to more than"):
        load_grid(grid)
