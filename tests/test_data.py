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


def test_ranks_read_the_single_process_stream_in_blocks_and_resume_at_any_world_size():
    for size, world, block in ((12, 2, 3), (11, 2, 4), (10, 3, 2)):
        stream = take(EpochSampler(size, seed=4), 60)
        samplers = [EpochSampler(size, seed=4, rank=r, world_size=world, block=block) for r in range(world)]
        steps = 60 // (world * block)
        per_rank = [take(s, steps * block) for s in samplers]
        merged = [k for step in range(steps) for r in range(world)
                  for k in per_rank[r][step * block:(step + 1) * block]]
        assert merged == stream[:steps * world * block]  # rank 0's block first, nothing dropped at epoch ends
        # resume from a global position, at this world size or another one
        at = world * block * 2
        again = [take(EpochSampler(size, seed=4, start=at, rank=r, world_size=world, block=block), block)
                 for r in range(world)]
        assert [k for part in again for k in part] == stream[at:at + world * block]
        assert take(EpochSampler(size, seed=4, start=at), 7) == stream[at:at + 7]
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(10, seed=0, rank=2, world_size=2)


def test_two_ranks_with_two_workers_each_see_every_json_sample_once_per_epoch(tmp_path: Path):
    """ALBEF-style JSON from the synthetic generator, two ranks × two loader workers, two epochs."""
    import torch

    from vlkit.data.json_dataset import PairDataset
    from vlkit.data.synthetic import SynthConfig, ensure
    from vlkit.data.transforms import eval_transform

    folder = ensure(tmp_path, SynthConfig(image_size=32, train_images=24, val_images=2, test_images=2))
    entries, _ = read_entries([folder / "train.json"], folder)
    dataset = PairDataset(entries, eval_transform(16), seed=0)
    seen: list[list[int]] = []
    for rank in range(2):
        sampler = EpochSampler(len(dataset), seed=0, rank=rank, world_size=2, block=4)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=list, num_workers=2)
        seen.append([s.key for batch in itertools.islice(loader, 6) for s in batch])  # 2 epochs of 12 per rank
    for epoch in range(2):
        keys = [k for part in seen for k in part[epoch * 12:(epoch + 1) * 12]]
        assert sorted(keys) == [epoch * 24 + i for i in range(24)]
