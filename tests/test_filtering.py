"""`vlkit data filter`: ALIGN's noisy web-data rules on ALBEF-style JSON, with images written on the fly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkit.cli import EXIT_DATA_ERROR, main
from vlkit.data.json_dataset import read_entries
from vlkit.data.tools.filtering import FilterRules, NearDuplicateIndex, filter_json_dataset, inspect_image, word_count


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A smooth random colour field (a stand-in for a photo: distinct low frequencies per seed)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    fine = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = fine + rng.normal(0, 6, fine.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


GOOD = "a red car parked near the old station"


@pytest.fixture()
def web_data(tmp_path: Path) -> dict[str, Path]:
    """Train and eval lists with one case per rule, and an image root."""
    root = tmp_path / "images"
    root.mkdir()
    train: list[object] = []

    def add(name: str, image: Image.Image | None, caption: object, fmt: str = "JPEG") -> None:
        if image is not None:
            image.save(root / name, format=fmt, quality=90)
        train.append({"image": name, "caption": caption, "source": "web"})

    for i in range(4):
        add(f"ok{i}.jpg", photo(i, 320, 240), [GOOD, f"photo number {i} of a street scene"])
    add("small.jpg", photo(10, 300, 150), GOOD)  # short side 150 < 200
    add("wide.jpg", photo(11, 700, 210), GOOD)  # aspect 3.33 > 3
    add("missing.jpg", None, GOOD)
    photo(12, 320, 240).save(root / "truncated.jpg", quality=90)
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    train.append({"image": "truncated.jpg", "caption": GOOD})
    photo(13, 320, 240).resize((400, 300), Image.Resampling.BICUBIC).save(root / "leak.jpg", quality=75)
    train.append({"image": "leak.jpg", "caption": GOOD})  # near-duplicate of eval image 13
    add("short_text.jpg", photo(14, 320, 240), ["a dog", GOOD])  # first caption has 2 words
    add("long_text.jpg", photo(15, 320, 240), " ".join(["word"] * 21))  # 21 words: entry goes
    for i in range(11):  # "stock photo ..." on 11 images (> 10): every one of those captions goes
        add(f"stock{i}.jpg", photo(100 + i, 320, 240), ["stock photo image of the day", f"a view of lake {i} today"])
    for i in range(10):  # on exactly 10 images: kept
        add(f"ten{i}.jpg", photo(200 + i, 320, 240), "Free  Vector  art download")
    train.append({"image": "ok0.jpg", "caption": ""})  # malformed: empty caption
    train.append(["not", "a", "mapping"])
    (tmp_path / "train.json").write_text(json.dumps(train))

    eval_root = tmp_path / "eval_images"
    eval_root.mkdir()
    evals = []
    for seed in (13, 300, 301):
        photo(seed, 320, 240).save(eval_root / f"e{seed}.png")
        evals.append({"image": f"e{seed}.png", "caption": ["an evaluation caption here"], "image_id": seed})
    (tmp_path / "eval.json").write_text(json.dumps(evals))
    return {"root": root, "train": tmp_path / "train.json", "eval": tmp_path / "eval.json", "eval_root": eval_root,
            "out": tmp_path / "filtered"}


def test_each_rule_removes_exactly_its_cases(web_data):
    report = filter_json_dataset([web_data["train"]], web_data["root"], web_data["out"],
                                 eval_files=[web_data["eval"]], eval_image_root=web_data["eval_root"], workers=2)
    counts = {rule: (c.entries, c.captions) for rule, c in report.removed.items()}
    assert counts == {"malformed": (2, 0), "unreadable": (2, 2), "short_side": (1, 1), "aspect": (1, 1),
                      "eval_duplicate": (1, 1), "word_count": (1, 2), "shared_text": (0, 11)}
    assert report.entries_in == 4 + 5 + 2 + 11 + 10 + 2 and report.captions_in == 8 + 5 + 3 + 22 + 10
    kept = json.loads((web_data["out"] / "train.json").read_text())
    by_image = {e["image"]: e for e in kept}
    assert set(by_image) == {*(f"ok{i}.jpg" for i in range(4)), "short_text.jpg",
                             *(f"stock{i}.jpg" for i in range(11)), *(f"ten{i}.jpg" for i in range(10))}
    assert by_image["short_text.jpg"]["caption"] == [GOOD]  # the 2-word caption went, the entry stayed
    assert by_image["stock3.jpg"]["caption"] == ["a view of lake 3 today"]
    assert by_image["ten0.jpg"]["caption"] == "Free  Vector  art download"  # a string stays a string
    assert by_image["ok1.jpg"]["source"] == "web"  # other fields pass through
    assert report.entries_out == len(kept) and report.captions_out == 8 + 1 + 11 + 10
    assert "leak.jpg" in report.removed["eval_duplicate"].examples[0]
    written = json.loads((web_data["out"] / "filter_report.json").read_text())
    assert written["removed"]["shared_text"]["captions"] == 11 and written["rules"]["max_words"] == 20
    entries, skipped = read_entries([web_data["out"] / "train.json"], web_data["root"])  # json_pairs reads it
    assert len(entries) == len(kept) and skipped == 0


def test_without_eval_files_the_leak_is_kept_and_thresholds_follow_the_rules(web_data):
    rules = FilterRules(min_short_side=100, max_aspect=4.0, max_images_per_text=20, min_words=1, max_words=30)
    report = filter_json_dataset([web_data["train"]], web_data["root"], web_data["out"], rules, workers=1)
    assert {r: c.captions for r, c in report.removed.items() if c.captions} == {"unreadable": 2}
    assert report.entries_out == report.entries_in - 4


def test_cli_prints_the_table_and_rejects_bad_input(web_data, capsys, tmp_path):
    args = ["data", "filter", str(web_data["train"]), "--image-root", str(web_data["root"]),
            "--out", str(web_data["out"]), "--eval", str(web_data["eval"]), "--eval-image-root",
            str(web_data["eval_root"]), "--workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "eval_duplicate" in out and "filter_report.json" in out
    assert main([*args[:2], str(tmp_path / "nope.json"), *args[3:]]) == EXIT_DATA_ERROR
    (tmp_path / "dict.json").write_text('{"image": "a.jpg"}')
    assert main([*args[:2], str(tmp_path / "dict.json"), *args[3:]]) == EXIT_DATA_ERROR
    assert "expected a JSON list" in capsys.readouterr().err
    assert main([*args, "--min-words", "5", "--max-words", "2"]) == EXIT_DATA_ERROR


def test_near_duplicate_index_matches_brute_force():
    rng = random.Random(0)
    stored = [rng.getrandbits(64) for _ in range(300)]
    queries = [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in stored[:50]]  # ≤ 2 bits off
    queries += [rng.getrandbits(64) for _ in range(200)]
    for distance in (0, 2, 4, 9):
        index = NearDuplicateIndex(stored, distance)
        for q in queries:
            dists = [(q ^ h).bit_count() for h in stored]
            best = min(dists)
            found = index.nearest(q)
            if best > distance:
                assert found is None
            else:
                assert found is not None and found[1] == best and dists[found[0]] == best


def test_word_count_and_image_inspection(tmp_path: Path):
    assert word_count("a  red car -- parked, 2 times!") == 6
    photo(1, 320, 240).save(tmp_path / "a.jpg", quality=90)
    photo(1, 640, 480).save(tmp_path / "b.png")
    photo(2, 320, 240).save(tmp_path / "c.jpg", quality=90)
    a, b, c = (inspect_image(tmp_path / n) for n in ("a.jpg", "b.png", "c.jpg"))
    assert a is not None and b is not None and c is not None
    assert (a.width, a.height, b.width) == (320, 240, 640)
    assert (a.phash ^ b.phash).bit_count() <= 4 < (a.phash ^ c.phash).bit_count()
    assert inspect_image(tmp_path / "missing.jpg") is None
