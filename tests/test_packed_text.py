"""Packed text (``encoder.pack_text``): the text layers run on the real tokens only, end to end with a
block-diagonal mask, and give the padded path's results at every real position — encodings, losses
and gradients of a whole ALBEF step, on the CPU backends (sdpa, math) and, with a GPU, xformers."""

from __future__ import annotations

import pytest
import torch

from vlkit.build import build_encoder
from vlkit.core.batch import Batch
from vlkit.encoders.albef import AlbefConfig
from vlkit.nn.attention import xformers_available
from vlkit.nn.packing import TextPacking

torch.set_num_threads(1)


def test_pack_and_unpack_place_the_real_tokens() -> None:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    packing = TextPacking.from_lengths([2, 4], width=4, device="cpu")
    packed = packing.pack(x)
    assert packed.shape == (1, 6, 3) and packing.tokens == 6
    torch.testing.assert_close(packed[0], torch.cat([x[0, :2], x[1, :4]]), rtol=0, atol=0)
    back = packing.unpack(packed)
    torch.testing.assert_close(back[1], x[1], rtol=0, atol=0)
    torch.testing.assert_close(back[0, :2], x[0, :2], rtol=0, atol=0)
    assert not back[0, 2:].any()
    with pytest.raises(ValueError, match=r"in \[1, 4\]"):
        TextPacking.from_lengths([0, 3], width=4, device="cpu")
    with pytest.raises(ValueError, match="expects"):
        packing.pack(x[:, :3])


def lengths_and_batch(g: torch.Generator, batch: int, width: int, vocab: int) -> tuple[list[int], torch.Tensor,
                                                                                        torch.Tensor]:
    lengths = torch.randint(2, width + 1, (batch,), generator=g).tolist()
    lengths[0] = width  # the longest sets the width, as in the collate
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(104, vocab, (batch, width), generator=g).masked_fill(mask == 0, 0)
    return lengths, ids, mask


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_packed_text_encoding_equals_padded(backend: str) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": backend})).eval()
    lengths, ids, mask = lengths_and_batch(torch.Generator().manual_seed(1), 7, 12, 30522)
    padded = encoder.encode_text(ids, mask)
    encoder.pack_text = True
    packed = encoder.encode_text(ids, mask, lengths=lengths)
    real = mask.bool()
    torch.testing.assert_close(packed.embeds[real], padded.embeds[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed.feat, padded.feat, rtol=0, atol=1e-5)
    assert not packed.embeds[~real].any()  # zeros at the padding
    unpacked = encoder.encode_text(ids, mask)  # no host lengths: the padded path
    torch.testing.assert_close(unpacked.embeds, padded.embeds, rtol=0, atol=0)


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "momentum_distillation"])
def test_packed_step_gives_the_padded_losses_and_gradients(distill: bool, tiny_albef_model, tiny_albef_batch,
                                                           tiny_albef_batch_shape: tuple[int, int]) -> None:
    """A whole ALBEF step (ITC + ITM hard negatives + MLM, teacher and queue with ``distill``) in fp32."""
    results = {}
    for pack in (False, True):
        model = tiny_albef_model(distill)  # same seed: same weights
        batch = tiny_albef_batch(model)
        batch.text_lengths = Batch.lengths_of(batch.attention_mask)
        for encoder in (model.encoder, *([model.teacher.encoder] if model.teacher is not None else [])):
            encoder.pack_text = pack
        torch.manual_seed(5)  # the same hard negatives
        losses = dict(model(batch).losses)
        sum(losses.values()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[pack] = (losses, grads)
    (ref_losses, ref_grads), (losses, grads) = results[False], results[True]
    assert set(losses) == set(ref_losses) and len(losses) >= 3
    for key in ref_losses:
        torch.testing.assert_close(losses[key], ref_losses[key], rtol=1e-5, atol=1e-6, msg=key)
    rel = float((grads - ref_grads).norm() / ref_grads.norm())
    assert rel <= 1e-5, rel
    B, _ = tiny_albef_batch_shape
    assert batch.size == B


@pytest.mark.skipif(not (torch.cuda.is_available() and xformers_available()), reason="needs CUDA and xformers")
def test_xformers_packed_text_matches_padded_sdpa_on_gpu() -> None:
    torch.manual_seed(0)
    cfg = {"size": "tiny", "attention": "xformers"}
    encoder = build_encoder(AlbefConfig.from_dict(cfg), device="cuda").eval()
    lengths, ids, mask = lengths_and_batch(torch.Generator().manual_seed(1), 32, 30, 30522)
    ids, mask = ids.cuda(), mask.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        padded = encoder.encode_text(ids, mask)
        encoder.pack_text = True
        packed = encoder.encode_text(ids, mask, lengths=lengths)
    real = mask.bool()
    diff = (packed.embeds[real].float() - padded.embeds[real].float()).norm() / padded.embeds[real].float().norm()
    assert float(diff) < 1e-2, float(diff)


def test_pack_text_with_compile_is_a_recipe_error() -> None:
    from vlkit.recipe import RecipeError, load_recipe

    assert load_recipe("albef/tiny", ["encoder.pack_text=true"]).encoder.pack_text
    with pytest.raises(RecipeError, match="encoder.pack_text"):
        load_recipe("albef/tiny", ["encoder.pack_text=true", "train.compile=true"])
