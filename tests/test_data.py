"""Annotation reading, the resumable epoch sampler and group (hard-negative) batching."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from vlkit.data.json_dataset import EpochSampler, read_entries


def take(sampler: EpochSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_epoch_sampler_visits_every_item_once_per_epoch_and_resumes_exactly():
    sampler = EpochSampler(10, seed=3)
    keys = take(sampler, 30)
    for epoch in range(3):
        chunk = keys[epoch * 10:(epoch + 1) * 10]
        assert sorted(k - epoch * 10 for k in chunk) == list(range(10))
    assert keys[:10] != keys[10:20]  # a new permutation each epoch
    assert take(EpochSampler(10, seed=3, start=17), 13) == keys[17:30]


def test_group_batching_keeps_groups_adjacent_and_is_a_permutation():
    groups = [0, 0, 1, None, 2, 2, 2, None, 3, 3]
    sampler = EpochSampler(10, seed=5, groups=groups)
    for epoch in range(4):
        order = sampler.order(epoch).tolist()
        assert sorted(order) == list(range(10))
        for label in (0, 1, 2, 3):
            positions = [order.index(i) for i, g in enumerate(groups) if g == label]
            assert max(positions) - min(positions) == len(positions) - 1, (label, order)
    assert not np.array_equal(sampler.order(0), sampler.order(1))
    keys = take(sampler, 40)
    assert take(EpochSampler(10, seed=5, start=23, groups=groups), 17) == keys[23:]


def test_group_labels_must_match_the_dataset():
    with pytest.raises(ValueError, match="3 group labels for 4 items"):
        EpochSampler(4, seed=0, groups=[0, 1, 2])


def test_read_entries_skips_and_counts_malformed_items(tmp_path: Path):
    items = [{"image": "a.png", "caption": "a red square", "image_id": 7, "group": 1},
             {"image": "b.png", "caption": ["one", "two"]},
             {"image": "c.png"},                      # no caption
             {"caption": "no image"},
             {"image": "d.png", "caption": ["ok", ""]},  # an empty caption
             "not a mapping"]
    (tmp_path / "ann.json").write_text(json.dumps(items))
    entries, skipped = read_entries([tmp_path / "ann.json"], tmp_path / "images")
    assert skipped == 4 and len(entries) == 2
    assert entries[0].idx == 7 and entries[0].group == 1 and entries[0].captions == ("a red square",)
    assert entries[1].image == tmp_path / "images" / "b.png" and entries[1].group is None
