"""Grad-CAM grounding: the recording attention path computes what the fused kernels compute, maps ignore
padding, pointing is scored as defined, and the task writes overlays and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlkit.build import build_encoder
from vlkit.eval.grounding import fusion_cross_attention, gradcam, pointing_hits, recorded_attention
from vlkit.heads.itm import ITMHead
from vlkit.recipe import load_recipe


@pytest.fixture(scope="module")
def albef():
    torch.manual_seed(0)
    encoder = build_encoder(load_recipe("albef/tiny").encoder).eval()
    return encoder, ITMHead(encoder.width)


def test_recording_attention_matches_the_fused_kernel(albef) -> None:
    encoder, _ = albef
    images, ids = torch.randn(3, 3, 64, 64), torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        plain = encoder.fuse(encoder.encode_image(images), encoder.encode_text(ids, mask)).text
        with recorded_attention(fusion_cross_attention(encoder, 2)) as probe:
            probed = encoder.fuse(encoder.encode_image(images), encoder.encode_text(ids, mask)).text
    torch.testing.assert_close(probed, plain, rtol=1e-5, atol=1e-5)
    assert probe[0].shape == (3, encoder.text_encoder.layers[0].attention.heads, 7, 1 + 64)  # 8×8 patches
    torch.testing.assert_close(probe[0].sum(-1), torch.ones(3, probe[0].shape[1], 7))
    assert fusion_cross_attention(encoder, 2).probe is None  # restored after the block


def test_gradcam_maps_are_non_negative_and_ignore_padding(albef) -> None:
    encoder, head = albef
    images, ids = torch.randn(2, 3, 64, 64), torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    maps = gradcam(encoder, head, images, ids, mask, fusion_layer=2)
    assert maps.shape == (2, 8, 8) and (maps >= 0).all() and maps.sum() > 0
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(gradcam(encoder, head, images, padded_ids, padded_mask, fusion_layer=2), maps,
                               rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in encoder.parameters())  # no gradients left on the weights
    with pytest.raises(ValueError, match="outside the encoder's 2 fusion layers"):
        gradcam(encoder, head, images, ids, mask, fusion_layer=3)


def test_pointing_hits_use_the_upsampled_peak() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 3] = 1.0  # top-right cell of a 4×4 grid → around pixel (28, 4) of a 32-px image
    maps[1, 3, 0] = 1.0  # bottom-left cell
    boxes = [(20.0, 0.0, 32.0, 10.0), (20.0, 0.0, 32.0, 10.0)]
    assert pointing_hits(maps, boxes, 32) == [True, False]


def test_grounding_task_writes_overlays_and_needs_cross_attention(tmp_path: Path) -> None:
    from tests.test_train import SMALL_DATA
    from vlkit.cli import main
    from vlkit.train.evaluate import task_metrics
    from vlkit.train.pretrain import Pretraining, run_pretraining

    args = [*SMALL_DATA, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=2",
            "eval.batch_size=8", "eval.k_test=4"]
    run_pretraining(load_recipe("albef/tiny", args), tmp_path / "run", progress=False)
    out = tmp_path / "ground"
    assert main(["eval", "albef/tiny", *args, "task={type: grounding, overlays: 3}", "--checkpoint",
                 str(tmp_path / "run"), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] > 0 and 0 <= metrics["pointing_acc"] <= 100 and metrics["fusion_layer"] == 2
    assert 0 < metrics["area_acc"] < 100
    assert sorted(p.suffix for p in (out / "gradcam").iterdir()) == [".png"] * 3

    recipe = load_recipe("vlmo/tiny", [*args, "task={type: grounding}"])
    run = Pretraining(recipe, tmp_path / "vlmo", train_data=False)
    with pytest.raises(ValueError, match="reads cross-attention"):
        task_metrics(run, recipe)


def test_referring_expressions_name_unique_objects(tmp_path: Path) -> None:
    from vlkit.data.synthetic import SynthConfig, ensure, read_scenes
    from vlkit.data.synthetic.grounding import referring_expressions

    folder = ensure(tmp_path, SynthConfig(train_images=4, val_images=2, test_images=30))
    scenes = {s.image: s for s in read_scenes(folder, "test")}
    found = referring_expressions(folder, "test")
    assert found
    for e in found:
        scene = scenes[e.image.relative_to(folder).as_posix()]
        named = [o for o in scene.objects if e.text == f"the {o.color} {o.shape}"]
        assert len(named) == 1 and named[0].box() == e.box
