"""VLMo's stage-wise pre-training as three recipes (``recipes/vlmo/stagewise/tiny_*``): masked image
modelling on images only, text-only MLM with the image path frozen, then vision-language
pre-training; plus the pieces it needs (patch masks, the ``mim`` objective, single-modality data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlkit.build import build_encoder, build_objective
from vlkit.encoders.albef import AlbefConfig
from vlkit.encoders.mome import MomeConfig
from vlkit.nn.patch_mask import PatchMask, random_patch_positions
from vlkit.objectives.mim import MIMConfig, patchify
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.weights import checkpoints as ckpt
from vlkit.weights.init_from import find_checkpoint

torch.set_num_threads(1)

SMALL = ["train.batch_size=8", "train.log_every=1000", "train.ckpt_every=0", "train.cpu_threads=1",
         "data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8"]
STAGE2_FROZEN = ("transformer.patch_embed.", "transformer.cls_token", ".norm1.", ".attn.", ".gamma_", ".mlp_imag.",
                 ".norm2_imag.", "pooler.", "itc_")
STAGE2_TRAINED = (".mlp_text.", ".norm2_text.", "text_embeddings.word_embeddings", "transformer.norm.",
                  "relative_position_bias_table")


def test_random_patch_positions_are_distinct_and_sorted() -> None:
    positions = random_patch_positions(32, 16, 6, "cpu")
    assert positions.shape == (32, 6)
    assert all(len(set(row)) == 6 for row in positions.tolist())
    assert torch.equal(positions, positions.sort(dim=1).values) and int(positions.max()) < 16
    with pytest.raises(ValueError, match="cannot mask"):
        random_patch_positions(2, 16, 17, "cpu")


@pytest.mark.parametrize("encoder_cfg", [MomeConfig.from_dict({"size": "tiny", "attention": "math"}),
                                         AlbefConfig.from_dict({"size": "tiny", "attention": "math"})],
                         ids=["mome", "albef"])
def test_patch_mask_replaces_exactly_the_named_patches(encoder_cfg: object) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(encoder_cfg).eval()
    tower = encoder.transformer if hasattr(encoder, "transformer") else encoder.visual_encoder
    _, patches, width = encoder.image_geometry()
    size = encoder_cfg.input_size
    images = torch.randn(3, 3, size, size)
    positions = random_patch_positions(3, patches, 5, "cpu")
    token = torch.randn(width)
    masked = tower.embed(images, PatchMask(positions, token))
    plain = tower.embed(images)
    hidden = torch.zeros(3, patches, dtype=torch.bool)
    hidden[torch.arange(3)[:, None], positions] = True
    hidden = torch.cat([torch.zeros(3, 1, dtype=torch.bool), hidden], dim=1)  # [CLS] first
    torch.testing.assert_close(masked[~hidden], plain[~hidden], rtol=0, atol=0)
    assert not torch.allclose(masked[hidden], plain[hidden])
    # what is left of a hidden patch is the token (plus the same position embedding, if any)
    torch.testing.assert_close(masked[hidden] - plain[hidden], (token - tower.patch_embed(images)[
        torch.arange(3)[:, None], positions].reshape(-1, width)).reshape(-1, width), rtol=1e-5, atol=1e-5)
    feat = encoder.encode_image(images, patch_mask=PatchMask(positions, token)).feat
    assert feat is not None and torch.isfinite(feat).all()


def test_mim_regresses_the_hidden_patches_pixels() -> None:
    """The loss is L1 between the decoder's output at the hidden positions and those patches' pixels."""
    torch.manual_seed(0)
    encoder = build_encoder(MomeConfig.from_dict({"size": "tiny", "attention": "math"}))
    mim = build_objective("mim", MIMConfig(type="mim", mask_ratio=0.25), encoder)
    assert mim.masked == 4  # a quarter of 16 patches
    images = torch.randn(2, 3, 32, 32)
    assert patchify(images, 8).shape == (2, 16, 192)
    torch.testing.assert_close(patchify(images, 8)[1, 5].reshape(8, 8, 3).permute(2, 0, 1), images[1, :, 8:16, 8:16])

    class OneStep:
        batch = type("B", (), {"images": images})()

        def masked_image(self, patch_mask: PatchMask) -> object:
            self.patch_mask = patch_mask
            return encoder.encode_image(images, patch_mask=patch_mask)

    step = OneStep()
    loss = mim(step).loss
    positions = step.patch_mask.positions
    tokens = encoder.encode_image(images, patch_mask=step.patch_mask).embeds[:, 1:]
    rows = torch.arange(2)[:, None]
    expected = (mim.head(tokens[rows, positions]) - patchify(images, 8)[rows, positions]).abs().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert mim.head.mask_token.grad is not None and mim.head.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="albef or mome"):
        build_objective("mim", MIMConfig(type="mim"), build_encoder(load_recipe("dual/tiny").encoder))


def test_objectives_that_need_pairs_refuse_single_modality_data(tmp_path: Path) -> None:
    recipe = load_recipe("vlmo/tiny", [*SMALL, f"data.source.root={tmp_path}", "data.modality=image"])
    with pytest.raises(ValueError, match=r"objective `itc` \(itc\) learns from image-text pair batches.*image-only"):
        Pretraining(recipe, tmp_path / "run")
    recipe = load_recipe("vlmo/stagewise/tiny_stage1_image", [*SMALL, f"data.source.root={tmp_path}",
                                                             "data.modality=text"])
    with pytest.raises(ValueError, match=r"`mim` \(mim\) learns from image-only or image-text pair"):
        Pretraining(recipe, tmp_path / "run")


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(find_checkpoint(run))["model"]


@pytest.mark.slow
def test_three_stages_run_in_sequence_and_stage_two_trains_only_the_text_side(tmp_path: Path) -> None:
    data = [*SMALL, f"data.source.root={tmp_path / 'data'}", "train.steps=4", "train.warmup_steps=1"]
    runs = {n: tmp_path / f"stage{n}" for n in (1, 2, 3)}
    run_pretraining(load_recipe("vlmo/stagewise/tiny_stage1_image", data), runs[1], progress=False)
    stage2 = load_recipe("vlmo/stagewise/tiny_stage2_text", [*data, f"init_from={runs[1]}"])
    run_pretraining(stage2, runs[2], progress=False)
    metrics = run_pretraining(load_recipe("vlmo/stagewise/tiny_stage3_vl", [*data, f"init_from={runs[2]}"]),
                              runs[3], progress=False)
    assert metrics["steps"] == 4 and "txt_r1" in metrics  # stage 3 evaluates retrieval

    first, second, third = (model_state(runs[n]) for n in (1, 2, 3))
    image_side = [k for k in first if k.startswith("encoder.") and any(p in k for p in (".attn.", ".mlp_imag."))]
    assert image_side
    initial = Pretraining(load_recipe("vlmo/stagewise/tiny_stage1_image", data), tmp_path / "fresh",
                          train_data=False).model.state_dict()
    assert any(not torch.equal(first[k], initial[k]) for k in image_side), "stage 1 trains the image path"

    frozen = [k for k in second if k.startswith("encoder.") and any(p in k for p in STAGE2_FROZEN)]
    trained = [k for k in second if k.startswith("encoder.") and any(p in k for p in STAGE2_TRAINED)]
    assert len(frozen) > 20 and len(trained) > 10
    for key in frozen:  # frozen in stage 2: exactly the stage-1 weights
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)
    changed = [k for k in trained if "relative_position" not in k and not torch.equal(second[k], first[k])]
    assert set(changed) >= {k for k in trained if ".mlp_text." in k or "word_embeddings" in k}
    assert "objectives.mlm.head.decoder.weight" in second or any(k.startswith("objectives.mlm.") for k in second)

    vl = [k for k in third if ".mlp_vl." in k]
    assert vl and not any(k in second for k in vl)  # stage 3 adds the VL experts, newly initialized
