"""Activation checkpointing of encoder blocks: same losses and gradients, blocks really recomputed."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from vlkit.build import build_encoder
from vlkit.encoders.base import Encoder
from vlkit.nn.checkpointing import CheckpointedBlock, set_grad_checkpointing, transformer_blocks
from vlkit.nn.vit import ViTBlock
from vlkit.recipe import load_recipe

torch.set_num_threads(1)

TOL = {"rtol": 1e-5, "atol": 1e-6}

# recipe, test overrides (small images, the math attention reference), blocks of the tiny encoder
ENCODERS = {
    "albef": ("albef/tiny", ["encoder.image.image_size=32"], 2 + 4),  # ViT depth + BERT text and fusion layers
    "mome": ("vlmo/tiny", ["encoder.image_size=32"], 4),  # multiway blocks
    "dual": ("dual/tiny", ["encoder.image.image_size=32"], 2 + 2),  # ViT depth + BERT layers
}
# every stochastic layer on, so that recomputation must replay the RNG to give the same gradients
DROPOUT = {
    "albef": ["encoder.image.drop_path=0.3", "encoder.text.dropout=0.2", "encoder.text.attention_dropout=0.2"],
    "mome": ["encoder.drop_path=0.3"],  # stochastic depth and the text-embedding dropout
    "dual": ["encoder.image.drop_path=0.3", "encoder.text.dropout=0.2", "encoder.text.attention_dropout=0.2"],
}


def tiny_encoder(name: str, extra: list[str] = ()) -> Encoder:
    recipe, overrides, _ = ENCODERS[name]
    torch.manual_seed(0)
    return build_encoder(load_recipe(recipe, ["encoder.attention=math", *overrides, *extra]).encoder).train()


def inputs(encoder: Encoder, batch: int = 3, length: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    """Images ``[B, 3, 32, 32]``, token ids ``[B, L]`` and a mask with padded rows."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(1, encoder.word_embeddings().num_embeddings, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 2 * row:] = 0
    return images, ids.masked_fill(mask == 0, 0), mask


def loss_of(encoder: Encoder, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """A loss touching every output: contrastive features (and VLMo's VL features), and for fusion
    encoders a fusion pass over positives and shifted (negative) pairs."""
    image = encoder.encode_image(images)
    text = encoder.encode_text(ids, mask)
    loss = (image.feat @ text.feat.T).logsumexp(dim=1).sum() + image.embeds.pow(2).mean() + text.embeds.pow(2).mean()
    if image.vl_feat is not None and text.vl_feat is not None:
        loss = loss + (image.vl_feat @ text.vl_feat.T).logsumexp(dim=0).sum()
    if encoder.supports_fusion:
        fused = encoder.fuse(image, text)
        shifted = torch.arange(1, ids.shape[0] + 1) % ids.shape[0]
        negatives = encoder.fuse(image, text, image_index=shifted)
        loss = loss + fused.cls.tanh().sum() + fused.text.pow(2).mean() + negatives.cls.sin().sum()
    return loss


def count_block_calls(module: nn.Module) -> Counter[int]:
    """Wrap every block's ``_block_forward`` so that each call (forward or recomputation) is counted
    under the block's index in :func:`transformer_blocks` order."""
    calls: Counter[int] = Counter()

    def counted(i: int, body: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls[i] += 1
            return body(*args, **kwargs)
        return run

    for i, block in enumerate(transformer_blocks(module)):
        block._block_forward = counted(i, block._block_forward)
    return calls


def run(encoder: Encoder, batch: tuple[Tensor, Tensor, Tensor], seed: int = 5) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and every parameter's gradient, from a fixed RNG state (dropout masks)."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of(encoder, *batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}


def assert_same(plain: tuple[Tensor, dict[str, Tensor]], ckpt: tuple[Tensor, dict[str, Tensor]]) -> None:
    torch.testing.assert_close(ckpt[0], plain[0], **TOL)
    assert ckpt[1].keys() == plain[1].keys() and len(plain[1]) > 0
    for name, grad in plain[1].items():
        torch.testing.assert_close(ckpt[1][name], grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dropout", [False, True], ids=["preset", "dropout"])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_checkpointing_gives_the_same_loss_and_gradients_and_recomputes_each_block(name: str, dropout: bool) -> None:
    plain = tiny_encoder(name, DROPOUT[name] if dropout else [])
    ckpt = copy.deepcopy(plain)
    blocks = ENCODERS[name][2]
    assert len(plain.blocks()) == blocks > 0
    assert ckpt.set_grad_checkpointing(True) == blocks
    assert all(b.grad_checkpointing for b in ckpt.blocks()) and not any(b.grad_checkpointing for b in plain.blocks())
    batch = inputs(plain)
    plain_calls, ckpt_calls = count_block_calls(plain), count_block_calls(ckpt)

    assert_same(run(plain, batch), run(ckpt, batch))
    assert set(plain_calls) == set(range(blocks)), "every block runs"
    # each call of a block runs its body once more in backward: forward + recomputation
    assert ckpt_calls == Counter({i: 2 * n for i, n in plain_calls.items()})


@pytest.mark.parametrize("name", list(ENCODERS))
def test_without_grad_or_in_eval_mode_blocks_run_once(name: str) -> None:
    plain = tiny_encoder(name)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    batch = inputs(plain)
    plain_calls, ckpt_calls = count_block_calls(plain), count_block_calls(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(loss_of(ckpt, *batch), loss_of(plain, *batch), rtol=0, atol=0)
    assert ckpt_calls == plain_calls and len(plain_calls) == ENCODERS[name][2]

    plain_calls.clear()
    ckpt_calls.clear()
    plain.eval()
    ckpt.eval()
    assert_same(run(plain, batch), run(ckpt, batch))
    assert ckpt_calls == plain_calls and len(plain_calls) == ENCODERS[name][2]


def test_vit_block_with_stochastic_depth_replays_its_rng() -> None:
    """Stochastic depth draws a fresh mask per call; the recomputation must draw the same one."""
    torch.manual_seed(0)
    plain = ViTBlock(32, 4, drop_path=0.5, backend="math").train()
    ckpt = copy.deepcopy(plain)
    assert set_grad_checkpointing(ckpt, True) == 1 and transformer_blocks(ckpt) == [ckpt]
    x = torch.randn(8, 5, 32)

    def grads(block: nn.Module, seed: int) -> tuple[Tensor, ...]:
        torch.manual_seed(seed)
        xi = x.clone().requires_grad_()
        out = block(xi)
        out.pow(2).sum().backward()
        result = (out.detach(), xi.grad, *(p.grad.clone() for p in block.parameters()))
        block.zero_grad(set_to_none=True)
        return result

    for seed in range(3):
        expected = grads(plain, seed)
        for got, want in zip(grads(ckpt, seed), expected, strict=True):
            torch.testing.assert_close(got, want, **TOL)
    # the masks are not trivial: two seeds drop different samples
    assert not torch.equal(grads(plain, 0)[0], grads(plain, 1)[0])


@pytest.mark.parametrize("recipe", ["albef/tiny", "vlmo/tiny", "dual/tiny", "dual/base", "dual/align"])
def test_recipe_key_switches_checkpointing_on(recipe: str) -> None:
    default = load_recipe(recipe).encoder
    assert default.grad_checkpointing is False
    cfg = load_recipe(recipe, ["encoder.grad_checkpointing=true"]).encoder
    assert cfg.grad_checkpointing is True
    encoder = build_encoder(cfg, device="meta")
    assert encoder.blocks() and all(isinstance(b, CheckpointedBlock) and b.grad_checkpointing
                                    for b in encoder.blocks())
    assert not any(b.grad_checkpointing for b in build_encoder(default, device="meta").blocks())
