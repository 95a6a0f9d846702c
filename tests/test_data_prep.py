"""Image and text preparation: ALBEF's RandAugment operations and rates, pre_caption, reduced JPEG
decoding, uint8 images normalized on the device, tokenizer padding rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from vlkit.data.json_dataset import load_image
from vlkit.data.randaugment import ALBEF_OPS, RandomAugment, apply_op, enhance_factor
from vlkit.data.text import CaptionCleaner, pre_caption
from vlkit.data.tokenizer import padded_length, tokenize
from vlkit.data.transforms import (
    NORMALIZATION,
    NormalizeUint8,
    decode_size,
    eval_transform,
    normalize_on_device,
    train_transform,
)
from vlkit.recipe import RecipeError, load_recipe

GREY = (100, 100, 100)


@pytest.fixture(scope="module")
def synthetic_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A WordPiece tokenizer trained on the synthetic world's words, saved and loaded as a BERT folder."""
    from vlkit.data.synthetic.lexicon import all_words
    from vlkit.data.synthetic.tokenizer import train_tokenizer
    from vlkit.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer([" ".join(all_words())] * 4, folder, 200)
    return load_tokenizer(folder)


def square_image(size: int = 32) -> Image.Image:
    """A grey canvas with a white 8×8 square at rows/cols 12..19."""
    pixels = np.full((size, size, 3), GREY, np.uint8)
    pixels[12:20, 12:20] = 255
    return Image.fromarray(pixels)


# ----------------------------------------------------------------------------------------------- pre_caption
@pytest.mark.parametrize(("raw", "clean"), [
    ("A Dog, running (fast)!", "a dog running fast"),
    ("well-known  photo/picture ~ #1", "well known photo picture 1"),
    ("<person> rides a bike.", "person rides a bike"),
    ("  spaced\tout \n", "spaced\tout"),  # single tabs are whitespace runs of length 1: kept, as ALBEF's
    ("it's a \"test\"; ok: yes?", "its a test ok yes"),
])
def test_pre_caption_matches_albef_rules(raw: str, clean: str):
    assert pre_caption(raw) == clean


def test_pre_caption_keeps_the_first_max_words():
    words = [f"w{i}" for i in range(40)]
    assert pre_caption(" ".join(words)) == " ".join(words[:30])
    assert pre_caption(" ".join(words), max_words=5) == "w0 w1 w2 w3 w4"
    assert CaptionCleaner(enabled=False)("Keep, THIS!") == "Keep, THIS!"
    assert CaptionCleaner(enabled=True, max_words=2)("Keep, THIS please") == "keep this"


# ----------------------------------------------------------------------------------------------- RandAugment
def test_brightness_and_sharpness_factor_at_level_7_is_1_36():
    assert enhance_factor(7) == pytest.approx(1.36)
    out = np.asarray(apply_op(square_image(), "Brightness", 7, np.random.default_rng(0)))
    assert out[0, 0].tolist() == [136, 136, 136]  # 100 · 1.36
    assert out[15, 15].tolist() == [255, 255, 255]  # clipped


def test_translate_moves_content_7_pixels_and_fills_grey():
    moved = {}
    for seed in range(20):  # both signs occur
        out = np.asarray(apply_op(square_image(), "TranslateX", 7, np.random.default_rng(seed)))
        cols = np.nonzero(out[15, :, 0] == 255)[0]
        moved[int(cols[0]) - 12] = out
    assert set(moved) == {-7, 7}
    assert (moved[-7][:, -7:] == 128).all()  # content moved left: the uncovered right edge is grey
    assert (moved[7][:, :7] == 128).all()


def test_rotate_and_shear_keep_size_and_fill_grey():
    for name in ("Rotate", "ShearX", "ShearY"):
        out = np.asarray(apply_op(square_image(), name, 7, np.random.default_rng(1)))
        assert out.shape == (32, 32, 3)
        assert (out == 128).all(-1).any(), name  # some corner was uncovered and filled
    rotated = np.asarray(apply_op(square_image(), "Rotate", 7, np.random.default_rng(1)))
    assert (rotated[15, 15] == 255).all()  # the centre stays put


def test_autocontrast_stretches_each_channel_and_equalize_spreads_the_histogram():
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 0] = np.linspace(50, 100, 16, dtype=np.uint8)
    pixels[..., 1] = 7
    pixels[..., 2] = np.linspace(0, 30, 16, dtype=np.uint8)[:, None]
    out = np.asarray(apply_op(Image.fromarray(pixels), "AutoContrast", 7, np.random.default_rng(0)))
    assert out[..., 0].min() == 0 and out[..., 0].max() >= 254  # (x - lo) · 255 / (hi - lo), truncated
    assert out[..., 2].min() == 0 and out[..., 2].max() >= 254
    assert (out[..., 1] == 7).all()  # a flat channel is left alone
    ramp = np.repeat(np.linspace(50, 100, 64, dtype=np.uint8)[None, :, None], 64, 0).repeat(3, 2)
    eq = np.asarray(apply_op(Image.fromarray(ramp), "Equalize", 7, np.random.default_rng(0)))
    assert eq.min() < 10 and eq.max() > 240  # 50..100 spread over the whole range


def test_identity_and_unknown_operations():
    image = square_image()
    assert np.array_equal(np.asarray(apply_op(image, "Identity", 7, np.random.default_rng(0))), np.asarray(image))
    with pytest.raises(ValueError, match="Solarize"):
        RandomAugment(ops=("Solarize",))
    with pytest.raises(ValueError, match="magnitude"):
        RandomAugment(magnitude=11)
    assert "Solarize" not in ALBEF_OPS and len(ALBEF_OPS) == 10


def test_each_drawn_operation_applies_with_probability_one_half():
    """With a single always-visible operation and N=2, an image stays unchanged iff neither draw fires:
    P = 0.25. 2,000 draws: the count lies within ±5 standard deviations of 500."""
    augment = RandomAugment(num_ops=2, magnitude=7, ops=("Brightness",))
    image = square_image(8)
    base = np.asarray(image)
    torch.manual_seed(0)
    unchanged = sum(np.array_equal(np.asarray(augment(image)), base) for _ in range(2000))
    sd = (2000 * 0.25 * 0.75) ** 0.5
    assert abs(unchanged - 500) < 5 * sd


def test_randaugment_is_reproducible_from_the_torch_seed():
    augment = RandomAugment()
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append([np.asarray(augment(square_image())) for _ in range(8)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs, strict=True))


def test_albef_train_transform_shapes_and_uint8_path_matches_cpu_normalization():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    full = train_transform(24, "clip", crop_scale=(0.2, 1.0), flip=True, randaugment=(2, 7))
    raw = train_transform(24, None, crop_scale=(0.2, 1.0), flip=True, randaugment=(2, 7))
    torch.manual_seed(5)
    a = full(image)
    torch.manual_seed(5)
    b = raw(image)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert b.dtype == torch.uint8
    assert torch.allclose(normalize_on_device(b[None], "clip")[0], a, atol=1e-6)
    for name, (mean, std) in NORMALIZATION.items():  # the fused normalization against torchvision's two steps
        reference = T.Normalize(mean, std)(T.ToDtype(torch.float32, scale=True)(b))
        torch.testing.assert_close(NormalizeUint8(name)(b), reference, rtol=0, atol=2e-6, msg=name)
    assert eval_transform(24)(image).shape == (3, 24, 24)


# ----------------------------------------------------------------------------------------------- decoding
def test_decode_size_covers_the_smallest_crop():
    assert decode_size(256) == 256
    assert decode_size(256, (0.2, 1.0)) == 661  # ⌈256 / sqrt(0.2 · 0.75)⌉
    assert decode_size(384, (0.5, 1.0)) == 628


def test_draft_decoding_shrinks_big_jpegs_but_never_below_the_requested_side(tmp_path: Path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(path, quality=90)
    assert load_image(path).size == (800, 600)
    assert load_image(path, draft_size=256).size == (400, 300)  # 1/4 would give 150 < 256
    assert load_image(path, draft_size=100).size == (200, 150)  # 1/8 would give 75 < 100
    png = tmp_path / "big.png"
    Image.open(path).save(png)
    assert load_image(png, draft_size=100).size == (800, 600)  # only JPEGs have DCT scaling


# ----------------------------------------------------------------------------------------------- tokenizer
def test_padded_length_rules():
    assert padded_length(11, 30, "longest") == 11
    assert padded_length(11, 30, "max_length") == 30
    assert padded_length(11, 30, "multiple_of_8") == 16
    assert padded_length(16, 30, "multiple_of_8") == 16
    with pytest.raises(ValueError, match="longest"):
        padded_length(3, 30, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("padding", ["longest", "max_length", "multiple_of_8"])
@pytest.mark.parametrize("drop_sep", [False, True])
def test_tokenize_padding_and_sep_rules(synthetic_tokenizer, padding: str, drop_sep: bool):
    texts = ["a red circle", "a big blue box above a red circle"]
    out = tokenize(synthetic_tokenizer, texts, 30, drop_sep=drop_sep, padding=padding)  # type: ignore[arg-type]
    lengths = out.attention_mask.sum(1).tolist()
    full = [len(synthetic_tokenizer.tokenize(t)) + 2 for t in texts]  # [CLS] ... [SEP]
    assert lengths == [n - 1 for n in full] if drop_sep else lengths == full
    assert out.input_ids.shape[1] == padded_length(max(lengths), 30, padding)  # type: ignore[arg-type]
    sep = synthetic_tokenizer.sep_token_id
    assert ((out.input_ids == sep).sum().item() == 0) if drop_sep else ((out.input_ids == sep).sum().item() == 2)
    assert (out.input_ids[out.attention_mask == 0] == synthetic_tokenizer.pad_token_id).all()
    assert all(len(w) == out.input_ids.shape[1] for w in out.word_ids)
    assert all(w[k] is None for w, row in zip(out.word_ids, out.attention_mask, strict=True)
               for k in range(len(w)) if row[k] == 0)


# ----------------------------------------------------------------------------------------------- recipe keys
def test_data_preparation_keys_are_validated():
    recipe = load_recipe("recipes/albef/base.yaml", [])
    assert recipe.data.randaugment is not None and recipe.data.randaugment.num_ops == 2
    assert recipe.data.randaugment.magnitude == 7 and recipe.data.pre_caption
    with pytest.raises(RecipeError, match="magnitude"):
        load_recipe("recipes/albef/base.yaml", ["data.randaugment.magnitude=11"])
    with pytest.raises(RecipeError, match="padding"):
        load_recipe("recipes/albef/base.yaml", ["data.padding=shortest"])


def test_normalize_on_device_matches_loader_normalization(tmp_path: Path, small_recipe):
    """``data.normalize_on_device``: the loader yields uint8 images; the trainer's on-device step turns
    them into the very images (and so the very loss) the loader would have normalized itself."""
    from vlkit.train.pretrain import Pretraining

    batches, runs = {}, {}
    for flag in (False, True):
        runs[flag] = Pretraining(small_recipe(tmp_path, "albef/tiny", f"data.normalize_on_device={str(flag).lower()}"),
                                 tmp_path / f"run-{flag}")
        batches[flag] = next(runs[flag].batches(0))
    assert batches[True].images.dtype == torch.uint8 and batches[False].images.dtype == torch.float32
    on_device = runs[True].trainer(progress=False).on_device
    assert on_device is not None and runs[False].trainer(progress=False).on_device is None
    normalized = on_device(batches[True])
    torch.testing.assert_close(normalized.images, batches[False].images, rtol=0, atol=1e-6)
    model = runs[False].model
    losses = []
    for batch in (batches[False], normalized):
        torch.manual_seed(0)  # the step's own draws (hard negatives) alike
        losses.append(model(batch, 0).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
