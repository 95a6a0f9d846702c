"""``encoder.text.local_mixing``: a depthwise convolution over neighbouring token embeddings (vlkit
deviation for small text towers trained from scratch), zeroed when BERT weights are imported."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig as HFBertConfig
from transformers import BertModel

from vlkit.nn.bert import BertConfig, BertEmbeddings, BertStack
from vlkit.recipe import load_recipe

SMALL = {"vocab_size": 50, "dim": 16, "layers": 2, "heads": 2, "intermediate": 32, "max_positions": 12}


def test_zeroed_mixing_computes_exactly_bert_and_a_fresh_one_does_not() -> None:
    torch.manual_seed(0)
    plain = BertEmbeddings(BertConfig(**SMALL)).eval()
    mixed = BertEmbeddings(BertConfig(**SMALL, local_mixing=3)).eval()
    missing, unexpected = mixed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["local_mixing.conv.bias", "local_mixing.conv.weight"] and not unexpected
    ids = torch.randint(1, 50, (3, 9))
    assert not torch.allclose(mixed(ids), plain(ids), atol=1e-3)  # random kernel: neighbours mix in
    mixed.local_mixing.zero_()
    assert torch.equal(mixed(ids), plain(ids))


def test_stack_with_mixing_matches_transformers_bert_until_it_trains() -> None:
    """HF BERT weights load into a stack with local mixing; outputs equal ``transformers.BertModel`` (fp32, 1e-5)."""
    torch.manual_seed(0)
    hf = BertModel(HFBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=12, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0), add_pooling_layer=False).eval()
    ours = BertStack(BertConfig(**SMALL, local_mixing=5, dropout=0.0, attention_dropout=0.0)).eval()
    ours.load_state_dict(hf.state_dict(), strict=False)
    ours.embeddings.local_mixing.zero_()
    ids = torch.randint(1, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours(ids, mask)[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=1e-5)


def test_a_token_sees_only_its_neighbours_and_never_the_padding() -> None:
    torch.manual_seed(0)
    emb = BertEmbeddings(BertConfig(**SMALL, local_mixing=3)).eval()
    ids = torch.randint(1, 50, (2, 9))
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] % 49) + 1
    moved = (emb(changed) - emb(ids)).norm(dim=-1)
    assert (moved[:, [3, 4, 5]] > 1e-3).all() and (moved[:, [0, 1, 2, 6, 7, 8]] < 1e-6).all()
    # the same 5 real tokens followed by 0 or 4 [PAD]s give the same embeddings at the real tokens
    short, padded = ids[:, :5], torch.cat([ids[:, :5], torch.zeros(2, 4, dtype=torch.long)], 1)
    torch.testing.assert_close(emb(padded)[:, :5], emb(short), rtol=0, atol=1e-6)


@pytest.mark.parametrize("width", [1, 2, 4, -3])
def test_invalid_widths_are_refused(width: int) -> None:
    with pytest.raises(ValueError, match="local_mixing"):
        BertConfig(**SMALL, local_mixing=width)


def test_recipes_switch_it_on_by_key() -> None:
    assert load_recipe("albef/tiny").encoder.text.local_mixing == 0  # ALBEF's text embeddings
    assert load_recipe("albef/tiny_grounded").encoder.text.local_mixing == 3  # one of vlkit's binding additions
    recipe = load_recipe("recipes/albef/tiny.yaml", ["encoder.text.local_mixing=5"])
    assert recipe.encoder.text.local_mixing == 5
