"""``train.compile``: every transformer block compiled (online and teacher), the same training steps."""

from __future__ import annotations

import pytest
import torch

from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.weights import checkpoints as ckpt

torch.set_num_threads(1)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(tmp_path, small_recipe):
    """3 steps of albef/tiny with the teacher consulted from step 0 (distillation, queue), eager vs compiled:
    every weight within 1e-5 (measured ≤ 1e-6). AdamW's eps is 1e-3 so that rounding differences in
    exactly-zero gradients (attention key biases) are not normalized into ±lr steps."""
    common = ("train.steps=3", "train.cpu_threads=1", "train.eps=1e-3", "momentum.warmup_steps=0", "eval.k_test=0",
              "data.padding=multiple_of_8")
    weights = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        run_pretraining(small_recipe(tmp_path, "albef/tiny", *common, f"train.compile={compiled}"), out,
                        progress=False)
        weights[compiled] = ckpt.load(ckpt.latest_checkpoint(out / "checkpoints"))["model"]
    assert sorted(weights[True]) == sorted(weights[False])
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0.0, atol=1e-5, msg=key)


def test_compile_wraps_every_block_and_pads_text_to_buckets(tmp_path, small_recipe):
    run = Pretraining(small_recipe(tmp_path, "albef/tiny", "train.compile=true"), tmp_path / "run")
    blocks = run.model.encoder.blocks() + run.model.teacher.encoder.blocks()
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert run.collate.padding == "multiple_of_8"  # the recipe's `longest` would recompile per length
