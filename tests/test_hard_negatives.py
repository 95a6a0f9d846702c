"""Annotated hard-negative captions: the synthetic swaps, the annotation field, the loader's draw and the
ITM pairs they add (against the weighted cross-entropy computed by hand)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.batch import HARD_NEGATIVES, Batch, HardNegativeText
from vlkit.core.errors import UserError
from vlkit.data.collate import PretrainCollate
from vlkit.data.hard_negatives import hard_negatives_problem
from vlkit.data.json_dataset import AnnotationPart, PairDataset, Sample, read_parts
from vlkit.data.synthetic.captions import captions_for, hard_negatives
from vlkit.data.synthetic.semantics import is_true
from vlkit.data.tokenizer import load_tokenizer
from vlkit.data.tokens import TextTokens
from vlkit.data.transforms import eval_transform
from vlkit.encoders.albef import AlbefConfig
from vlkit.objectives.itc import ITCConfig
from vlkit.objectives.itm import ITMConfig
from vlkit.objectives.negatives import HardNegativesConfig
from vlkit.recipe import load_recipe
from vlkit.schema import ConfigError
from vlkit.train.pretrain import run_pretraining


@pytest.fixture
def data(small_synthetic: Path) -> Path:
    return small_synthetic


def test_synthetic_hard_negatives_are_false_word_swaps_of_their_caption(training_scenes) -> None:
    scenes = training_scenes(40, 2)
    relation_swaps = 0
    for scene in scenes:
        for caption in captions_for(scene, 5):
            negatives = hard_negatives(caption, scene)
            assert is_true(caption.text, scene)
            if len(caption.phrases) < 2:
                assert negatives == []
            for negative in negatives:
                assert negative != caption.text
                assert sorted(re.findall(r"\w+", negative)) == sorted(re.findall(r"\w+", caption.text))
                assert not is_true(negative, scene)
            a, b = (p.text() for p in caption.phrases[:2]) if len(caption.phrases) > 1 else ("", "")
            if caption.relational and a != b:  # the two phrases trade places: the relation reverses
                swapped = caption.text.replace(a, "\0").replace(b, a).replace("\0", b)
                relation_swaps += swapped in negatives
    assert relation_swaps > 50


def test_written_annotations_carry_one_list_of_negatives_per_caption(data: Path) -> None:
    records = json.loads((data / "train.json").read_text())
    assert all(hard_negatives_problem(r, r["caption"]) is None for r in records)
    assert all(len(r["hard_negatives"]) == len(r["caption"]) for r in records)
    assert sum(len(n) for r in records for n in r["hard_negatives"]) > len(records)
    entries = read_parts([AnnotationPart(data / "train.json", data)]).entries
    assert entries[0].hard_negatives == tuple(tuple(n) for n in records[0]["hard_negatives"])


@pytest.mark.parametrize(("negatives", "message"), [
    ("x", "one list of captions per caption"),
    ([["fine"], ["one too many"]], "one list of captions per caption"),
    ([[3]], "non-empty strings"),
    ([[""]], "non-empty strings"),
])
def test_malformed_hard_negatives_are_named_and_the_entry_skipped(tmp_path: Path, negatives: object,
                                                                  message: str) -> None:
    bad = {"image": "a.png", "caption": ["a red circle"], "hard_negatives": negatives}
    good = {"image": "b.png", "caption": ["a red circle", "a circle"], "hard_negatives": [["a blue circle"], []]}
    assert message in (hard_negatives_problem(bad, bad["caption"]) or "")
    file = tmp_path / "ann.json"
    file.write_text(json.dumps([bad, good]))
    result = read_parts([AnnotationPart(file, tmp_path)])
    assert result.skipped == 1 and result.entries[0].hard_negatives == (("a blue circle",), ())


def test_loader_draws_one_annotated_negative_per_row_and_marks_rows_without(data: Path) -> None:
    tokenizer = load_tokenizer(data / "tokenizer")
    image = torch.zeros(3, 8, 8)
    options = ("a blue circle above a red box", "a red box above a blue circle")
    samples = [Sample(image, "a red circle above a blue box", 0, key, hard_negatives=options) for key in range(40)]
    samples.append(Sample(image, "a red circle", 1, 40))
    collate = PretrainCollate(tokenizer, max_length=30, hard_negatives=True)
    negatives = collate(samples).extras[HARD_NEGATIVES]
    assert negatives.valid.tolist() == [1.0] * 40 + [0.0]
    decoded = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
               for ids, mask in zip(negatives.input_ids, negatives.attention_mask, strict=True)]
    assert set(decoded[:40]) == set(options) and decoded[40] == ""  # both drawn over 40 rows (P(miss) = 2^-39)
    assert negatives.lengths == tuple(negatives.attention_mask.sum(1).tolist())
    again = collate(samples).extras[HARD_NEGATIVES]
    assert torch.equal(again.input_ids, negatives.input_ids)  # the draw is seeded by the sample keys
    assert negatives.count == 40
    assert HARD_NEGATIVES not in PretrainCollate(tokenizer, max_length=30)(samples).extras  # only when asked
    assert HARD_NEGATIVES not in collate(samples[40:]).extras  # nor when no sample has one

    dataset = PairDataset(read_parts([AnnotationPart(data / "train.json", data)]).entries, eval_transform(64))
    for key in range(8):
        sample = dataset[key]
        entry = dataset.entries[key]
        assert sample.hard_negatives == entry.hard_negatives[entry.captions.index(sample.caption)]


TOKENS = TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=30522)


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_itm_adds_weighted_pairs_of_image_and_annotated_negative(weight: float) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "sdpa"}))
    same_image = HardNegativesConfig(type="in_batch_hard", exclude="same_image")
    model = build_pretrain_model(encoder, {"itc": ITCConfig(type="itc"),
                                           "itm": ITMConfig(type="itm", negatives=same_image, hard_negatives=weight)},
                                 None).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (2, 7), generator=g)
    ids[:, 0] = TOKENS.cls_id
    negative_ids = torch.randint(1000, 2000, (2, 5), generator=g)
    negative_ids[:, 0] = TOKENS.cls_id
    mask, negative_mask = torch.ones_like(ids), torch.ones_like(negative_ids)
    # two captions of one image: no in-batch negatives (exclude: same_image), so only the annotated one counts
    batch = Batch(torch.randn(2, 3, 32, 32, generator=g), ids, mask, torch.tensor([0, 0]))
    batch.extras[HARD_NEGATIVES] = HardNegativeText(negative_ids, negative_mask, torch.tensor([1.0, 0.0]), (5, 5), 1)
    result = model(batch)

    step = model.step(batch, 0)
    head = model.objectives["itm"].head
    positive = head(step.fuse().cls)
    negative = head(step.fuse(text=encoder.encode_text(negative_ids, negative_mask)).cls)
    ce_positive = F.cross_entropy(positive, torch.ones(2, dtype=torch.long), reduction="none")
    ce_negative = F.cross_entropy(negative, torch.zeros(2, dtype=torch.long), reduction="none")
    expected = (ce_positive.sum() + weight * ce_negative[0]) / (2 + weight)  # row 1's placeholder adds nothing
    torch.testing.assert_close(result.losses["loss/itm"], expected)
    assert result.metrics["metric/itm/hard_negative_acc"].item() == float(negative[0].argmax() == 0)


def test_hard_negative_weight_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="hard_negatives"):
        ITMConfig(type="itm", hard_negatives=-1.0)


def test_training_reads_them_and_refuses_data_without_them(data: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    common = [f"data.tokenizer={data / 'tokenizer'}", "data.group_batches=false", "train.batch_size=8",
              "train.warmup_steps=1", "train.ckpt_every=0", "train.log_every=1", "eval.batch_size=8",
              "eval.k_test=4", "eval.swap_probe=false", "objectives.itm.hard_negatives=1", "train.steps=2"]

    def source(train: Path) -> str:
        return f"data.source={{type: json_pairs, splits: {{train: [{train}], test: [{data / 'test.json'}]}}, " \
               f"image_root: {data}}}"

    caplog.set_level(logging.INFO)
    run_pretraining(load_recipe("albef/tiny", [source(data / "train.json"), *common]), tmp_path / "run",
                    progress=False)
    records = json.loads((data / "train.json").read_text())
    assert f"hard_negatives: {sum(any(r['hard_negatives']) for r in records)} of {len(records)} `train` entries" \
        in caplog.text
    logged = EventAccumulator(str(tmp_path / "run" / "tb"))
    logged.Reload()
    assert "metric/itm/hard_negative_acc" in logged.Tags()["scalars"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{k: v for k, v in r.items() if k != "hard_negatives"} for r in records]))
    # no entry lists any: the extra ITM pairs would never be formed, so training is refused before it starts
    with pytest.raises(UserError, match=rf"objectives.itm \(itm\) reads the `hard_negatives` annotations, but none "
                                        rf"of the {len(records)} `train` entries has any"):
        run_pretraining(load_recipe("albef/tiny", [source(plain), *common]), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2" / "checkpoints").exists()
