"""ALBEF and dual encoders built from recipes: shapes, shared image keys/values, backends, timm towers."""

from __future__ import annotations

import pytest
import timm
import torch

from vlkit.build import build_encoder, parameter_report
from vlkit.encoders.albef import AlbefEncoder
from vlkit.encoders.dual import DualEncoder
from vlkit.nn.self_attention import set_attention_backend
from vlkit.recipe import load_recipe

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def albef(encoder_test_shapes: list[str]) -> AlbefEncoder:
    torch.manual_seed(0)
    return build_encoder(load_recipe("albef/tiny", ["encoder.attention=sdpa", *encoder_test_shapes]).encoder).eval()


def test_albef_shapes_and_unit_features(albef, text_batch):
    images = torch.randn(4, 3, 32, 32)
    ids, mask = text_batch()
    image = albef.encode_image(images)
    text = albef.encode_text(ids, mask)
    assert image.embeds.shape == (4, 17, 64) and image.feat.shape == (4, 32)
    assert text.embeds.shape == (4, 9, 64) and text.feat.shape == (4, 32) and text.mask.dtype == torch.bool
    torch.testing.assert_close(image.feat.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text.feat.norm(dim=-1), torch.ones(4))
    fused = albef.fuse(image, text)
    assert fused.text.shape == (4, 9, 64) and fused.cls.shape == (4, 64)
    torch.testing.assert_close(fused.cls, fused.text[:, 0])


def test_albef_shared_image_kv_with_indices_equals_fusing_gathered_rows(albef, text_batch):
    """Hard negatives reuse the per-layer image keys/values by indexing them; the result is the same
    as fusing explicitly gathered image and text batches (no recomputation needed)."""
    torch.manual_seed(1)
    image = albef.encode_image(torch.randn(4, 3, 32, 32))
    text = albef.encode_text(*text_batch())
    kv = albef.image_kv(image)
    assert len(kv) == 2 and kv[0][0].shape == (4, 17, 4, 16)
    image_index = torch.tensor([2, 0, 3, 3, 1, 0])
    text_index = torch.tensor([0, 1, 1, 2, 3, 3])
    shared = albef.fuse(image, text, image_index=image_index, text_index=text_index, image_kv=kv)
    explicit = albef.fuse(image.select(image_index), text.select(text_index))
    torch.testing.assert_close(shared.text, explicit.text, rtol=0, atol=0)


def test_albef_fusion_reads_text_layers_then_cross_attends(albef, text_batch):
    """encode_text + fuse = BERT's 'multi_modal' pass: every layer in order, fusion layers attending
    to the image tokens (written out layer by layer against the stack's modules)."""
    torch.manual_seed(2)
    images, (ids, mask) = torch.randn(3, 3, 32, 32), text_batch(3)
    image = albef.encode_image(images)
    stack = albef.text_encoder
    hidden = stack.embeddings(ids)
    for i, layer in enumerate(stack.layers):
        kv = layer.crossattention.kv(image.embeds) if i >= stack.fusion_layer else None
        hidden = layer(hidden, mask.bool(), cross_kv=kv)
    fused = albef.fuse(image, albef.encode_text(ids, mask))
    torch.testing.assert_close(fused.text, hidden, rtol=0, atol=0)


@pytest.mark.parametrize("recipe", ["albef/tiny", "dual/tiny"])
def test_sdpa_equals_math_forward_and_gradients(recipe, encoder_test_shapes, text_batch):
    torch.manual_seed(3)
    encoder = build_encoder(load_recipe(recipe, encoder_test_shapes).encoder).eval()
    images, (ids, mask) = torch.randn(3, 3, 32, 32), text_batch(3)
    outputs = {}
    for backend in ("math", "sdpa"):
        set_attention_backend(encoder, backend)
        encoder.zero_grad()
        image, text = encoder.encode_image(images), encoder.encode_text(ids, mask)
        out = [image.feat, text.feat]
        if encoder.supports_fusion:
            out.append(encoder.fuse(image, text).cls)
        loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in out)
        loss.backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        outputs[backend] = (out, grads)
    for a, b in zip(outputs["sdpa"][0], outputs["math"][0], strict=True):
        assert rel_err(a, b) <= TOL
    grads_sdpa, grads_math = outputs["sdpa"][1], outputs["math"][1]
    flat_sdpa, flat_math = torch.cat([g.flatten() for g in grads_sdpa]), torch.cat([g.flatten() for g in grads_math])
    assert rel_err(flat_sdpa, flat_math) <= TOL
    # per tensor, with a floor for tensors whose exact gradient is zero (e.g. attention key biases,
    # which softmax ignores): their entries are rounding noise ~1e-10 of the overall gradient scale
    floor = 1e-7 * flat_math.double().norm()
    for a, b in zip(grads_sdpa, grads_math, strict=True):
        assert (a.double() - b.double()).norm() <= TOL * b.double().norm() + floor


def test_dual_encoder_has_no_fusion_and_says_so(encoder_test_shapes, text_batch):
    encoder = build_encoder(load_recipe("dual/tiny", encoder_test_shapes).encoder)
    assert isinstance(encoder, DualEncoder) and not encoder.supports_fusion
    image = encoder.encode_image(torch.randn(2, 3, 32, 32))
    text = encoder.encode_text(*text_batch(2))
    assert image.feat.shape == text.feat.shape == (2, 32)
    with pytest.raises(NotImplementedError, match="no fusion layers"):
        encoder.fuse(image, text)


def test_dual_encoder_with_a_timm_backbone_equals_timm_pooled_features():
    """Any timm model as the image tower (ALIGN uses EfficientNet): the feature is the projection of
    timm's own globally pooled features."""
    torch.manual_seed(4)
    cfg = load_recipe("dual/tiny", ["encoder.image_backbone=efficientnet_b0", "encoder.image.image_size=64"]).encoder
    encoder = build_encoder(cfg).eval()
    reference = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(encoder.image_tower.model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    expected = torch.nn.functional.normalize(encoder.vision_proj(reference(images)), dim=-1)
    image = encoder.encode_image(images)
    torch.testing.assert_close(image.feat, expected)
    assert image.embeds.shape == (2, 4, 1280)  # 2×2 feature map as tokens


def test_albef_base_parameter_count_matches_the_paper_architecture():
    """ViT-B/16 at 256 px: 85.8M; BERT-base with 6 cross-attention layers: 123.1M without the MLM head
    (the head adds 0.62M with the decoder tied to the word embeddings); projections 0.39M."""
    encoder = build_encoder(load_recipe("albef/base").encoder, device="meta")
    rows = {r.name: r.count for r in parameter_report(encoder.parts())}
    assert rows["vision"] == 85_844_736
    assert rows["text"] + rows["fusion"] == 123_075_072
    assert rows["projections"] == 2 * (768 * 256 + 256)
    assert rows["total"] == 209_313_536


@pytest.mark.parametrize("patch_size", [2, 8, 16])
def test_conv_stem_gives_the_patch_grid(patch_size):
    """The convolutional stem (log2 p stride-2 convolutions) yields the same tokens as linear patches."""
    from vlkit.nn.stem import ConvStem, PatchEmbed

    images = torch.randn(2, 3, 32, 32)
    conv, linear = ConvStem(patch_size, 24)(images), PatchEmbed(patch_size, 24)(images)
    assert conv.shape == linear.shape == (2, (32 // patch_size) ** 2, 24)
    convs = [m for m in ConvStem(patch_size, 24).stem if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == patch_size.bit_length() - 1


def test_conv_stem_has_no_batch_statistics(encoder_test_shapes):
    """A sample's encoding does not depend on the rest of its batch (LayerNorm, not BatchNorm)."""
    torch.manual_seed(5)
    encoder = build_encoder(load_recipe("albef/tiny", [*encoder_test_shapes, "encoder.image.stem=conv"]).encoder)
    encoder = encoder.train()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        whole = encoder.encode_image(images).embeds
        first = encoder.encode_image(images[:1]).embeds
    torch.testing.assert_close(whole[:1], first, rtol=1e-5, atol=1e-5)


def test_conv_stem_needs_a_power_of_two_patch():
    from vlkit.recipe import RecipeError

    with pytest.raises(RecipeError, match="power of two"):
        load_recipe("albef/tiny", ["encoder.image.patch_size=6", "encoder.image.image_size=36",
                                   "encoder.image.stem=conv"])
