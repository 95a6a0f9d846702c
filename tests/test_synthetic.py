"""The embedded synthetic dataset: formats, determinism, truth of every annotation, twins, swaps,
tokenizer and the generate-once cache."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlkit.data.synthetic import SynthConfig, dataset_dir, ensure, generate, read_scenes
from vlkit.data.synthetic import cache as cache_module
from vlkit.data.synthetic.captions import captions_for
from vlkit.data.synthetic.config import FORMAT_VERSION
from vlkit.data.synthetic.pairs import nlvr_truth
from vlkit.data.synthetic.render import render
from vlkit.data.synthetic.scene import Background, Obj, Scene, sample_split, swap_pair
from vlkit.data.synthetic.semantics import CountIs, Desc, Exists, ParseError, Related, entailment_label, is_true, parse
from vlkit.data.synthetic.semantics import words as split_words
from vlkit.data.synthetic.vqa import answer
from vlkit.schema import ConfigError

SPLITS = ("train", "val", "test")
SMALL = SynthConfig(seed=3, train_images=60, val_images=24, test_images=24)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SMALL)
    return out


def load(folder: Path, name: str) -> object:
    with open(folder / name, encoding="utf-8") as f:
        return json.load(f)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def scenes_by_image(folder: Path, split: str) -> dict[str, Scene]:
    return {s.image: s for s in read_scenes(folder, split)}


def all_texts(folder: Path) -> list[str]:
    texts: list[str] = []
    for split in SPLITS:
        texts += [c for r in load(folder, f"{split}.json") for c in r["caption"]]  # type: ignore[attr-defined]
        for r in load(folder, f"vqa_{split}.json"):  # type: ignore[attr-defined]
            texts += [r["question"], *r["answer"]]
        texts += [r["sentence"] for r in load(folder, f"nlvr_{split}.json")]  # type: ignore[attr-defined]
        texts += [r["sentence"] for r in load(folder, f"ve_{split}.json")]  # type: ignore[attr-defined]
        if split != "train":
            texts += [r["swapped"] for r in load(folder, f"{split}_swaps.json")]  # type: ignore[attr-defined]
    return texts


# ---------------------------------------------------------------------------------------------- hand-built
def _scene(*objects: Obj) -> Scene:
    return Scene(0, "test", 0, 64, tuple(objects), Background("flat", (40, 40, 40), 0, 4, 0, 0), seed=0)


RED_CIRCLE = Obj("circle", "red", "small", 16, 12, 14)  # top left
BLUE_SQUARE = Obj("square", "blue", "large", 30, 44, 24)  # bottom middle
GREEN_CROSS = Obj("cross", "green", "small", 48, 12, 14)  # top right


def test_parser_and_truth_on_a_hand_built_scene() -> None:
    scene = _scene(RED_CIRCLE, BLUE_SQUARE)
    assert parse("a red circle above a big blue box") == [
        Exists(Desc("circle", "red")), Related(Desc("circle", "red"), "above", Desc("square", "blue", "large"))]
    assert parse("a single red disc") == [CountIs(1), Exists(Desc("circle", "red"))]
    assert is_true("a red circle above a blue square", scene)
    assert is_true("the blue square is to the right of the red circle", scene)
    assert not is_true("a blue square above a red circle", scene)  # relation swapped
    assert not is_true("a blue circle above a red square", scene)  # colours swapped
    assert not is_true("a small blue square", scene)
    assert is_true("two shapes: a red circle and a large blue square", scene)
    assert not is_true("three objects: a red circle and a blue square", scene)
    with pytest.raises(ParseError):
        parse("a red circle floating above a square")


def test_vqa_nlvr_and_entailment_readers_on_hand_built_scenes() -> None:
    left, right = _scene(RED_CIRCLE, BLUE_SQUARE, GREEN_CROSS), _scene(BLUE_SQUARE)
    assert answer("what color is the disc?", left) == ("color", "red")
    assert answer("what shape is the green object?", left) == ("shape", "cross")
    assert answer("how many objects are there?", left) == ("count", "3")
    assert answer("how many yellow objects are there?", left) == ("count_color", "0")
    assert answer("is there a blue box?", left) == ("exists", "yes")
    assert answer("is the blue square small or large?", left) == ("size", "large")
    assert answer("what is below the green cross?", left) == ("relation", "blue square")
    assert answer("what color is the object left of the green cross?", left) is None  # two objects are
    assert answer("what is above the blue square?", left) is None
    assert nlvr_truth("both images contain a blue square", left, right)
    assert nlvr_truth("the left image has more objects than the right image", left, right)
    assert not nlvr_truth("there is a blue square in exactly one image", left, right)
    assert nlvr_truth("the left image contains a red circle left of a green cross", left, right)
    assert nlvr_truth("there are four objects in total", left, right)
    assert entailment_label("there is a red circle", left) == "entailment"
    assert entailment_label("the red circle is made of glass", left) == "neutral"
    assert entailment_label("the yellow circle is made of glass", left) == "contradiction"
    assert entailment_label("a green cross below a red circle", left) == "contradiction"


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError) as err:
        SynthConfig(max_objects=7)
    assert err.value.key == "max_objects"
    with pytest.raises(ConfigError):
        SynthConfig(twin_fraction=1.5)
    assert SynthConfig.from_dict(SMALL.to_dict()) == SMALL


# ---------------------------------------------------------------------------------------------- generated
def test_generation_is_deterministic(data: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", SMALL, workers=2)
    assert file_bytes(again.out_dir) == file_bytes(data)
    other = generate(tmp_path / "other", SynthConfig(**{**SMALL.to_dict(), "seed": 4}))
    a, b = file_bytes(other.out_dir), file_bytes(data)
    assert a["train.json"] != b["train.json"] and a["images/train/000000.png"] != b["images/train/000000.png"]


def test_formats(data: Path) -> None:
    meta = load(data, "synthetic.json")
    assert meta["format_version"] == FORMAT_VERSION and meta["config"] == SMALL.to_dict()  # type: ignore[index]
    ids: list[int] = []
    for split in SPLITS:
        records = load(data, f"{split}.json")
        assert len(records) == getattr(SMALL, f"{split}_images") == meta["counts"][f"{split}.json"]  # type: ignore
        for r in records:  # type: ignore[attr-defined]
            assert set(r) == {"image", "caption", "image_id", "group", "phrases", "hard_negatives"}
            assert r["caption"] and all(isinstance(c, str) and c for c in r["caption"])
            assert len(set(r["caption"])) == len(r["caption"])
            with Image.open(data / r["image"]) as im:
                assert im.mode == "RGB" and im.size == (SMALL.image_size, SMALL.image_size)
            ids.append(r["image_id"])
        for q in load(data, f"vqa_{split}.json"):  # type: ignore[attr-defined]
            assert set(q) == {"question_id", "image", "question", "answer"} and (data / q["image"]).exists()
            assert len(q["answer"]) == SMALL.vqa_annotators
        for r in load(data, f"nlvr_{split}.json"):  # type: ignore[attr-defined]
            assert set(r) == {"images", "sentence", "label"} and r["label"] in ("True", "False")
            assert len(r["images"]) == 2 and all((data / p).exists() for p in r["images"])
        for r in load(data, f"ve_{split}.json"):  # type: ignore[attr-defined]
            assert set(r) == {"image", "sentence", "label"} and (data / r["image"]).exists()
        if split != "train":
            for r in load(data, f"{split}_swaps.json"):  # type: ignore[attr-defined]
                assert set(r) == {"image", "image_id", "caption", "swapped", "kind"}
    assert len(ids) == len(set(ids))
    answers = {a for q in load(data, "vqa_train.json") for a in q["answer"]}  # type: ignore[attr-defined]
    assert load(data, "answer_list.json") == sorted(answers)
    assert not list(data.rglob(".*tmp*"))


def test_captions_are_true_and_swaps_false_with_the_same_words(data: Path) -> None:
    kinds: Counter[str] = Counter()
    for split in SPLITS:
        scenes = scenes_by_image(data, split)
        for r in load(data, f"{split}.json"):  # type: ignore[attr-defined]
            assert all(is_true(c, scenes[r["image"]]) for c in r["caption"])
        if split == "train":
            continue
        swaps = load(data, f"{split}_swaps.json")
        captions = {r["image"]: r["caption"] for r in load(data, f"{split}.json")}  # type: ignore[attr-defined]
        assert {r["image"] for r in swaps} == {i for i, s in scenes.items() if len(s.objects) >= 2}  # type: ignore
        for r in swaps:  # type: ignore[attr-defined]
            scene = scenes[r["image"]]
            assert r["caption"] in captions[r["image"]] and is_true(r["caption"], scene)
            assert not is_true(r["swapped"], scene)
            assert r["swapped"] != r["caption"]
            assert Counter(split_words(r["swapped"])) == Counter(split_words(r["caption"]))
            kinds[r["kind"]] += 1
    assert set(kinds) == {"attribute", "relation"}


def test_twins_differ_exactly_in_the_declared_way(data: Path) -> None:
    for split in SPLITS:
        scenes = read_scenes(data, split)
        by_id = {s.image_id: s for s in scenes}
        twins = [s for s in scenes if s.twin_of is not None]
        assert twins
        for t in twins:
            original = by_id[t.twin_of]  # type: ignore[index]
            assert original.index == t.index - 1 and t.focus == original.focus and t.focus is not None
            assert t.background == original.background and t.seed == original.seed
            assert t.objects == swap_pair(original.objects, t.twin_kind, *t.focus)  # type: ignore[arg-type]
            assert t.objects != original.objects
            # the original's first caption (about the swapped pair) is false for the twin
            assert not is_true(captions_for(original, 1)[0].text, t)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6])
def test_twin_fraction(fraction: float) -> None:
    scenes = sample_split("train", 1500, 0, seed=1, image_size=64, min_objects=1, max_objects=4,
                          twin_fraction=fraction)
    twins = sum(s.twin_of is not None for s in scenes)
    assert abs(twins / (len(scenes) - twins) - fraction) < 0.06
    assert Counter(s.twin_kind for s in scenes if s.twin_kind).keys() <= {"color", "shape", "position"}


def test_tokenizer_loads_offline_and_covers_all_text(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertTokenizerFast

    folder = data / "tokenizer"
    assert {p.name for p in folder.iterdir()} >= {"vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                 "special_tokens_map.json"}
    for tok in (AutoTokenizer.from_pretrained(folder), BertTokenizerFast.from_pretrained(folder)):
        assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids("[PAD]") == 0
        assert {tok.cls_token, tok.sep_token, tok.mask_token, tok.unk_token} == {"[CLS]", "[SEP]", "[MASK]", "[UNK]"}
        assert len(tok) == load(data, "synthetic.json")["vocab_size"]  # type: ignore[index]
        ids = tok(all_texts(data))["input_ids"]
        assert all(tok.unk_token_id not in row for row in ids)
        assert ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id
        assert tok.decode(tok("A Big Red Disc over a box")["input_ids"], skip_special_tokens=True) == \
            "a big red disc over a box"


def test_vqa_answers_nlvr_and_ve_labels_agree_with_scenes(data: Path) -> None:
    for split in SPLITS:
        scenes = scenes_by_image(data, split)
        for q in load(data, f"vqa_{split}.json"):  # type: ignore[attr-defined]
            got = answer(q["question"], scenes[q["image"]])
            assert got is not None
            top, votes = Counter(q["answer"]).most_common(1)[0]
            assert top == got[1] and votes > len(q["answer"]) // 2
        nlvr = load(data, f"nlvr_{split}.json")
        for r in nlvr:  # type: ignore[attr-defined]
            left, right = (scenes[p] for p in r["images"])
            assert str(nlvr_truth(r["sentence"], left, right)) == r["label"]
        labels = Counter(r["label"] for r in nlvr)  # type: ignore[attr-defined]
        assert abs(labels["True"] - labels["False"]) <= 1
        ve = load(data, f"ve_{split}.json")
        for r in ve:  # type: ignore[attr-defined]
            assert entailment_label(r["sentence"], scenes[r["image"]]) == r["label"]
        counts = Counter(r["label"] for r in ve).values()  # type: ignore[attr-defined]
        assert len(counts) == 3 and max(counts) - min(counts) <= 1


# ---------------------------------------------------------------------------------------------- ensure
TINY = SynthConfig(seed=5, train_images=12, val_images=6, test_images=6, vqa_per_image=1, ve_per_image=1)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []

    def counting(out_dir: Path, cfg: SynthConfig, *, workers: int = 1) -> object:
        made.append(Path(out_dir))
        return generate(out_dir, cfg, workers=workers)

    monkeypatch.setattr(cache_module, "generate", counting)
    return made


def test_ensure_generates_once_then_reuses(tmp_path: Path, calls: list[Path]) -> None:
    folder = ensure(tmp_path, TINY)
    assert folder == dataset_dir(tmp_path, TINY) and folder.name.startswith("shapes-")
    stamp = (folder / "synthetic.json").stat().st_mtime_ns
    assert ensure(tmp_path, TINY) == folder and len(calls) == 1
    assert (folder / "synthetic.json").stat().st_mtime_ns == stamp
    other = ensure(tmp_path, SynthConfig(**{**TINY.to_dict(), "seed": 6}))
    assert other != folder and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([folder.name, other.name])


def test_ensure_regenerates_interrupted_or_mismatched_folders(tmp_path: Path, calls: list[Path]) -> None:
    folder = ensure(tmp_path, TINY)
    (folder / "synthetic.json").unlink()  # as if interrupted before the metadata was written
    assert ensure(tmp_path, TINY) == folder and len(calls) == 2 and (folder / "synthetic.json").exists()
    meta = load(folder, "synthetic.json")
    meta["config"]["seed"] = 99  # type: ignore[index]
    (folder / "synthetic.json").write_text(json.dumps(meta))
    assert ensure(tmp_path, TINY) == folder and len(calls) == 3
    assert load(folder, "synthetic.json")["config"] == TINY.to_dict()  # type: ignore[index]


def test_ensure_is_safe_when_callers_race(tmp_path: Path, calls: list[Path]) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure(tmp_path, TINY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3 and len(calls) == 1
    assert (results[0] / "synthetic.json").exists()


# ---------------------------------------------------------------------------------------------- property
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), image_size=st.sampled_from([48, 64, 96]))
def test_rendered_objects_are_inside_and_relations_agree_with_centres(seed: int, image_size: int) -> None:
    scene = sample_split("val", 1, 0, seed=seed, image_size=image_size, min_objects=1, max_objects=4,
                         twin_fraction=0.0)[0]
    centres = []
    for i, o in enumerate(scene.objects):
        mask = np.asarray(render(scene, only=i, blank=True)).max(axis=2) > 0
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0 and xs.min() >= 1 and ys.min() >= 1
        assert xs.max() <= image_size - 2 and ys.max() <= image_size - 2
        centre = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
        assert abs(centre[0] - o.x) <= 1 and abs(centre[1] - o.y) <= 1
        centres.append(centre)
    drawn = render(scene)
    assert drawn.size == (image_size, image_size) and drawn.mode == "RGB"
    for caption in captions_for(scene, 5):
        for claim in parse(caption.text):
            if isinstance(claim, Related):
                a, b = (next(k for k, o in enumerate(scene.objects) if d.matches(o)) for d in (claim.a, claim.b))
                (ax, ay), (bx, by) = centres[a], centres[b]
                offset = {"left": bx - ax, "right": ax - bx, "above": by - ay, "below": ay - by}[claim.relation]
                assert offset >= 0.15 * image_size
