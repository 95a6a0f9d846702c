"""Phrase grounding: the annotations (spans and boxes), their path through the loader, and the
``grounding`` objective's loss against the X-VLM formula (L1 + 1 − GIoU) on hand-checkable boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from vlkit.core.batch import PHRASE_REGIONS, Batch
from vlkit.data.collate import PretrainCollate
from vlkit.data.json_dataset import AnnotationPart, PairDataset, Sample, read_parts
from vlkit.data.loader_requests import PhraseRegionTransform
from vlkit.data.phrases import PhraseBox, phrase_regions, phrases_problem
from vlkit.data.synthetic import read_scenes
from vlkit.data.synthetic.captions import captions_for
from vlkit.data.synthetic.lexicon import COLORS, SHAPE_WORDS
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import load_tokenizer
from vlkit.data.transforms import eval_transform
from vlkit.heads.box import BoxHead
from vlkit.objectives.grounding import Grounding, GroundingConfig, pool_phrases
from vlkit.objectives.phrase_patch import PhrasePatch, PhrasePatchConfig, covered_patches
from vlkit.recipe import RecipeError, load_recipe


@pytest.fixture
def data(small_synthetic: Path) -> Path:
    return small_synthetic


def test_caption_phrase_spans_name_the_phrase_text_and_its_object(training_scenes) -> None:
    scenes = training_scenes(30, 1)
    checked = 0
    for scene in scenes:
        for caption in captions_for(scene, 5):
            spans = caption.phrase_spans()
            assert len(spans) == len(caption.phrases) == len(caption.objects)
            for (start, end), phrase, k in zip(spans, caption.phrases, caption.objects, strict=True):
                assert caption.text[start:end] == phrase.text()
                obj = scene.objects[k]
                assert phrase.color in (None, obj.color)
                assert phrase.shape in SHAPE_WORDS[obj.shape]
                checked += 1
    assert checked > 100


def test_synthetic_annotations_carry_phrase_boxes_of_the_right_objects(data: Path) -> None:
    records = json.loads((data / "train.json").read_text())
    scenes = {s.image_id: s for s in read_scenes(data, "train")}
    for record in records:
        assert len(record["phrases"]) == len(record["caption"])
        assert phrases_problem(record, record["caption"]) is None
        objects = scenes[record["image_id"]].objects
        for caption, phrases in zip(record["caption"], record["phrases"], strict=True):
            assert phrases, caption
            for p in phrases:
                left, top, right, bottom = p["box"]
                inside = [o for o in objects
                          if abs(o.x - (left + right) / 2) <= 1 and abs(o.y - (top + bottom) / 2) <= 1]
                assert len(inside) == 1
                words = caption[p["span"][0]:p["span"][1]].split()
                assert words[-1] in SHAPE_WORDS[inside[0].shape]
                assert [w for w in words if w in COLORS] in ([], [inside[0].color])


@pytest.mark.parametrize(("phrases", "message"), [
    ("x", "one list per caption"),
    ([[{"span": [0, 99], "box": [0, 0, 2, 2]}]], "outside its caption"),
    ([[{"span": [0, 3], "box": [4, 0, 2, 2]}]], "empty phrase box"),
    ([[{"span": [0, 3], "box": [0, 0, 2]}]], "not [left, top, right, bottom]"),
    ([[{"span": "0:3", "box": [0, 0, 2, 2]}]], "not [start, end]"),
])
def test_malformed_phrases_are_named_and_the_entry_skipped(tmp_path: Path, phrases: object, message: str) -> None:
    bad = {"image": "a.png", "caption": ["a red circle"], "phrases": phrases}
    good = {"image": "b.png", "caption": ["a red circle"], "phrases": [[{"span": [2, 12], "box": [1, 2, 5, 6]}]]}
    assert message in (phrases_problem(bad, bad["caption"]) or "")
    file = tmp_path / "ann.json"
    file.write_text(json.dumps([bad, good]))
    result = read_parts([AnnotationPart(file, tmp_path)])
    assert result.skipped == 1 and len(result.entries) == 1
    assert result.entries[0].phrases == ((PhraseBox(2, 12, (1.0, 2.0, 5.0, 6.0)),),)


def test_loader_turns_phrases_into_token_masks_and_normalized_boxes(data: Path) -> None:
    tokenizer = load_tokenizer(data / "tokenizer")
    part = read_parts([AnnotationPart(data / "train.json", data)])
    dataset = PairDataset(part.entries, eval_transform(64), seed=0)
    samples = [dataset[k] for k in range(12)]
    collate = PretrainCollate(tokenizer, max_length=30, transforms=[PhraseRegionTransform()])
    batch = collate(samples)
    regions = batch.extras[PHRASE_REGIONS]
    assert regions.dropped == 0 and len(regions.rows) == sum(len(s.phrases) for s in samples)
    flat = [(row, p) for row, s in enumerate(samples) for p in s.phrases]
    for k, (row, phrase) in enumerate(flat):
        assert int(regions.rows[k]) == row
        ids = batch.input_ids[row][regions.tokens[k]]
        assert tokenizer.decode(ids) == samples[row].caption[phrase.start:phrase.end]
        left, top, right, bottom = phrase.box
        expected = torch.tensor([(left + right) / 2, (top + bottom) / 2, right - left, bottom - top])
        torch.testing.assert_close(regions.boxes[k], expected)
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
    entry = part.entries[0]
    size = 64  # the synthetic images are 64 px: the sample's box is the annotation's box / 64
    assert samples[0].phrases[0].box == tuple(v / size for v in next(
        p.box for caption, ps in zip(entry.captions, entry.phrases, strict=True) if caption == samples[0].caption
        for p in ps[:1]))


def test_truncated_and_cleaned_phrases_are_dropped_and_counted(data: Path) -> None:
    tokenizer = load_tokenizer(data / "tokenizer")
    caption = "the red circle is above the blue box"
    phrases = (PhraseBox(4, 14, (0.1, 0.1, 0.3, 0.3)), PhraseBox(28, 36, (0.5, 0.5, 0.9, 0.9)))
    sample = Sample(torch.zeros(3, 8, 8), caption, 0, 0, phrases)
    short = PretrainCollate(tokenizer, max_length=6, transforms=[PhraseRegionTransform()])([sample])
    assert len(short.extras[PHRASE_REGIONS].rows) == 1 and short.extras[PHRASE_REGIONS].dropped == 1
    shouting = Sample(torch.zeros(3, 8, 8), caption.upper(), 0, 0, phrases)
    cleaned = PretrainCollate(tokenizer, max_length=30, transforms=[PhraseRegionTransform()],
                              clean=CaptionCleaner(enabled=True))([shouting])
    assert len(cleaned.extras[PHRASE_REGIONS].rows) == 0 and cleaned.extras[PHRASE_REGIONS].dropped == 2


def test_phrase_regions_match_tokens_inside_the_span() -> None:
    offsets = [[(0, 0), (0, 3), (4, 7), (8, 14), (15, 17), (0, 0)]]
    regions = phrase_regions([(PhraseBox(4, 14, (0.0, 0.0, 0.5, 1.0)),)], offsets, 7)
    assert regions.tokens.tolist() == [[False, False, True, True, False, False, False]]
    torch.testing.assert_close(regions.boxes, torch.tensor([[0.25, 0.5, 0.5, 1.0]]))


def test_pooling_mean_and_last() -> None:
    tokens = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    regions = phrase_regions([(), (PhraseBox(0, 1, (0, 0, 1, 1)),)], [[], [(0, 0), (0, 1), (0, 0), (0, 0)]], 4)
    regions.tokens = torch.tensor([[False, True, True, False]])
    assert pool_phrases(tokens, regions, "mean").item() == pytest.approx((5 + 6) / 2)
    assert pool_phrases(tokens, regions, "last").item() == 6


class FixedBoxes(nn.Module):
    """A head that returns preset boxes (plus zero times its input, to keep the graph)."""

    def __init__(self, boxes: torch.Tensor) -> None:
        super().__init__()
        self.boxes = nn.Parameter(boxes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.boxes + 0 * x[:, :1]


def grounding_step(target: torch.Tensor) -> object:
    from types import SimpleNamespace

    regions = phrase_regions([(PhraseBox(0, 1, (0, 0, 1, 1)),)] * len(target), [[(0, 1)]] * len(target), 1)
    regions.boxes = target
    fused = SimpleNamespace(text=torch.ones(len(target), 1, 8))
    return SimpleNamespace(batch=SimpleNamespace(extras={PHRASE_REGIONS: regions}), fused=fused)


def test_grounding_loss_is_l1_plus_one_minus_giou() -> None:

    objective = Grounding(GroundingConfig(), head=BoxHead(8))
    # target: the box [0, 0.5] x [0, 0.5]; prediction: [0.25, 0.75] x [0, 0.5] (cx, cy, w, h below)
    target = torch.tensor([[0.25, 0.25, 0.5, 0.5]])
    objective.head = FixedBoxes(torch.tensor([[0.5, 0.25, 0.5, 0.5]]))
    out = objective(grounding_step(target))
    iou = 0.125 / 0.375  # intersection 0.25 x 0.5, union 2 x 0.25 - 0.125
    enclosing = 0.75 * 0.5
    giou = iou - (enclosing - 0.375) / enclosing
    assert out.loss.item() == pytest.approx(0.25 + (1 - giou), abs=1e-6)
    assert out.metrics["iou"].item() == pytest.approx(iou, abs=1e-6)
    assert out.metrics["acc50"].item() == 0.0
    objective.head = FixedBoxes(target.clone())
    exact = objective(grounding_step(target))
    assert exact.loss.item() == pytest.approx(0.0, abs=1e-6) and exact.metrics["acc50"].item() == 1.0


def test_a_batch_without_phrases_gives_a_zero_loss_that_touches_the_head() -> None:
    from types import SimpleNamespace

    objective = Grounding(GroundingConfig(), head=BoxHead(8))
    step = SimpleNamespace(batch=SimpleNamespace(extras={PHRASE_REGIONS: phrase_regions([(), ()], [[], []], 3)}))
    out = objective(step)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(p.grad is not None for p in objective.head.parameters())


def test_grounding_refuses_augmentations_that_move_the_boxes() -> None:
    with pytest.raises(RecipeError, match=r"data\.flip"):
        load_recipe("recipes/albef/tiny.yaml", ["objectives.grounding={type: grounding}", "data.flip=true"])
    recipe = load_recipe("recipes/albef/tiny.yaml", ["objectives.grounding={type: grounding}"])
    assert recipe.objectives["grounding"].type == "grounding"


def test_batch_regions_move_with_the_batch() -> None:
    regions = phrase_regions([(PhraseBox(0, 1, (0, 0, 1, 1)),)], [[(0, 1)]], 2)
    batch = Batch(None, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), torch.zeros(1),
                  extras={PHRASE_REGIONS: regions})
    moved = batch.to("cpu")
    assert torch.equal(moved.extras[PHRASE_REGIONS].boxes, regions.boxes)


def test_covered_patches_take_cells_whose_centre_is_inside_and_the_centre_cell() -> None:
    # 4x4 grid, cell centres at 0.125, 0.375, 0.625, 0.875
    boxes = torch.tensor([[0.5, 0.25, 0.5, 0.5],      # x in [0.25, 0.75], y in [0, 0.5]: cells (0..1, 1..2)
                          [0.9, 0.9, 0.05, 0.05]])    # too small to hold a centre: the cell of its centre
    cells = covered_patches(boxes, 4).view(2, 4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 1:3] = True
    assert torch.equal(cells[0], expected)
    assert cells[1].sum() == 1 and cells[1, 3, 3]


def test_phrase_patch_loss_is_cross_entropy_to_the_covered_patches() -> None:
    from types import SimpleNamespace

    encoder = SimpleNamespace(width=4, image_geometry=lambda: (8, 4, 3))  # a 2x2 patch grid, width 3
    objective = PhrasePatch.build(PhrasePatchConfig(dim=2, temperature=0.5), "phrase_patch",
                                  SimpleNamespace(encoder=encoder))
    with torch.no_grad():
        objective.text_proj.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        objective.text_proj.bias.zero_()
        objective.patch_proj.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        objective.patch_proj.bias.zero_()
    text = torch.tensor([[[0.0, 0, 0, 0], [1.0, 0, 0, 0]]])  # token 1 is the phrase: direction (1, 0)
    image = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [1.0, 0, 0]]])  # [CLS] + 4 patches
    regions = phrase_regions([(PhraseBox(0, 1, (0.0, 0.0, 0.5, 0.5)),)], [[(0, 0), (0, 1)]], 2)
    step = SimpleNamespace(batch=SimpleNamespace(extras={PHRASE_REGIONS: regions}),
                           text=SimpleNamespace(embeds=text), image=SimpleNamespace(embeds=image))
    out = objective(step)
    logits = 2.0 * torch.tensor([1.0, 0.0, 0.0, 1.0])  # cosine / 0.5; the box covers the top-left patch only
    expected = -logits.log_softmax(0)[0]
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert out.metrics["top1_in_box"].item() == 1.0  # the argmax (first of the tied best) is inside


def test_giou_loss_matches_torchvision_without_reading_the_device() -> None:
    from torchvision.ops import generalized_box_iou_loss

    from vlkit.objectives.grounding import giou_loss_pairs

    g = torch.Generator().manual_seed(0)
    corners = torch.rand(64, 2, 2, generator=g)
    boxes = torch.cat((corners.min(1).values, corners.max(1).values), dim=1)  # [64, 4] x1 y1 x2 y2
    pred, target = boxes[:32], boxes[32:]
    pred[0] = target[0]  # identical boxes
    pred[1] = torch.tensor([0.0, 0.0, 0.1, 0.1])  # disjoint from target[1]
    target[1] = torch.tensor([0.5, 0.5, 0.9, 0.9])
    torch.testing.assert_close(giou_loss_pairs(pred, target), generalized_box_iou_loss(pred, target),
                               rtol=1e-5, atol=1e-6)
