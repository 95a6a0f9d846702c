"""Official VQA v2 files and the official answer normalization: the normalization rules (examples, a
step-by-step reference of the rules, idempotence), the VQA v2 reader (entries, image paths, skipped
questions, test splits, errors naming the file) and the VQA accuracy with normalization."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlkit.data.formats.task_data import answer_vocabulary, parse_vqa
from vlkit.data.formats.vqa_v2 import is_vqa_v2_questions, read_vqa_v2
from vlkit.data.json_dataset import AnnotationError
from vlkit.data.vqa_normalize import ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION, normalize_answer
from vlkit.eval.classification import mean_vqa_accuracy, vqa_accuracy


# ---------------------------------------------------------------------------------------------- normalization
@pytest.mark.parametrize(("raw", "expected"), [
    ("Two", "2"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"), ("one dog", "1 dog"),
    ("oneself", "oneself"),                               # number words are whole words only
    ("the dog", "dog"), ("A Dog", "dog"), ("an apple", "apple"), ("a", ""), ("theater", "theater"),
    ("a man's hat", "man's hat"),                         # the apostrophe is no punctuation
    ("dont", "don't"), ("whats", "what's"), ("Its", "its"), ("oclock", "o'clock"), ("twas", "'twas"),
    ("yes.", "yes"), ("5.", "5"), ("2.5", "2.5"), (".5", ".5"), ("e.g.", "eg"), ("mr. smith", "mr smith"),
    ("1,000", "1000"),                                    # digit-comma-digit: every mark is removed
    ("3,4 and a,b", "34 and ab"), ("1.5,2", "1.52"),
    ("red,white", "red white"),                           # not next to a space: replaced by a space
    ("red, white", "red white"),                          # next to a space somewhere: removed everywhere
    ("x,y, z", "xy z"), ("x -y-z", "x yz"),               # ... before or after it
    ("t-shirt", "t shirt"), ("left - right", "left right"), ("cat/dog", "cat dog"), ("Yes!", "yes"),
    ('"yes"', "yes"), ("(a) dog", "dog"), ("12:30", "12:30"), ("50%", "50%"), ("#1", "#1"),
    ("hot\tdog\n", "hot dog"), ("  Yes  ", "yes"), ("black  and   white", "black and white"),
])
def test_normalize_answer_follows_the_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def reference_normalize(answer: str) -> str:
    """The official rules transcribed step by step (one punctuation mark at a time, conditions on the text
    before any replacement, periods character by character) — a differently built check of the regexes."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    digit_comma_digit = any(text[i] == "," and text[i - 1] in "0123456789" and text[i + 1] in "0123456789"
                            for i in range(1, len(text) - 1))
    for mark in PUNCTUATION:
        beside_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if beside_space or digit_comma_digit else " ")
    out = "".join(c for i, c in enumerate(out) if c != "." or out[i + 1:i + 2] in tuple("0123456789"))
    words = []
    for word in out.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


_PIECES = st.one_of(
    st.sampled_from(sorted([*NUMBER_WORDS, *ARTICLES, *CONTRACTIONS, "Two", "The", "DONT", "yes", "2.5"])),
    st.text(alphabet=PUNCTUATION + ".:' \n\t0123456789aAbT", max_size=4),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=8))
def test_normalize_answer_matches_a_step_by_step_reference(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert normalize_answer(text) == reference_normalize(text)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_PIECES, max_size=8).map("".join)))
def test_normalize_answer_is_idempotent(text: str) -> None:
    """Genuinely idempotent over any string: after one pass no listed punctuation is left, every kept period
    precedes a digit, words are lower-case and single-spaced, digits / contractions are no keys of the number
    or article tables, and no contraction maps further (checked below)."""
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert once == once.strip() and "  " not in once and not re.search(r"\.(?![0-9])", once)


def test_contraction_table_is_closed_and_lower_case() -> None:
    assert all(k == k.lower() and v == v.lower() for k, v in CONTRACTIONS.items())
    assert all(CONTRACTIONS.get(v, v) == v for v in CONTRACTIONS.values())
    assert not set(CONTRACTIONS.values()) & (set(NUMBER_WORDS) | ARTICLES)


def test_parse_vqa_normalizes_answers_for_the_vocabulary() -> None:
    entries = [parse_vqa({"image": "a.png", "question": "how many?", "answer": a}, Path("."), i)
               for i, a in enumerate([["Two", "2", "two."], ["The dog", "dog", " 2 "]])]
    assert entries[0].answers == ("2", "2", "2") and entries[1].answers == ("dog", "dog", "2")
    assert answer_vocabulary(entries) == ["2", "dog"]


# ---------------------------------------------------------------------------------------------- accuracy
def test_vqa_accuracy_normalizes_prediction_and_answers() -> None:
    # 10 annotators: "2" written three ways by 5 of them, "3" by 5.
    answers = ["2", "2", "2", "two", "Two", "3", "3", "3", "3", "3"]
    # Raw: "two" matches 1 annotator; leaving it out → 0 matches (0), leaving any of the 9 others out →
    # 1 match (1/3): (1·0 + 9·1/3) / 10 = 0.3. Normalized: all five "2" match; every subset keeps ≥ 4 → 1.
    assert vqa_accuracy("two", answers, normalize=False) == pytest.approx(0.3)
    assert vqa_accuracy("two", answers) == pytest.approx(1.0)
    # 2 of 10 say two: raw "2" matches 1 → 0.3; normalized 2 matches → (2·1/3 + 8·2/3) / 10 = 0.6.
    fewer = ["2", "two", *["3"] * 8]
    assert vqa_accuracy("2", fewer, normalize=False) == pytest.approx(0.3)
    assert vqa_accuracy("The 2.", fewer) == pytest.approx(0.6)
    assert vqa_accuracy("3", fewer) == pytest.approx(1.0)                 # 8 annotators: unaffected
    assert vqa_accuracy("Yes!", ["yes"]) == 1.0 and vqa_accuracy("Yes!", ["yes"], normalize=False) == 0.0
    assert mean_vqa_accuracy(["two", "2"], [answers, fewer]) == pytest.approx(80.0)
    assert mean_vqa_accuracy(["two", "2"], [answers, fewer], normalize=False) == pytest.approx(30.0)


# ---------------------------------------------------------------------------------------------- reader
def annotation(qid: int, image_id: int, answers: list[str]) -> dict[str, Any]:
    return {"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


def write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def official(tmp_path: Path) -> tuple[Path, Path]:
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                 "data_subtype": "val2014", "questions": [
                     {"image_id": 42, "question": "How many cats? ", "question_id": 420},
                     {"image_id": 42, "question": "Is it a dog?", "question_id": 421},
                     {"image_id": "7", "question": "What is this?", "question_id": 70},      # malformed
                     {"image_id": 7, "question": "Where?", "question_id": 71},               # no annotation
                     {"image_id": 1234567, "question": "Why?", "question_id": 72},           # bad annotation
                     {"image_id": 42, "question": "How many cats? ", "question_id": 420},    # duplicate
                 ]}
    annotations = {"info": {}, "data_subtype": "val2014", "annotations": [
        annotation(420, 42, ["Two", "2", "two.", "3"]),
        annotation(421, 42, ["yes", "Yes!", "no"]),
        {"question_id": 72, "image_id": 1234567, "answers": "because"},                     # malformed
        annotation(999, 5, ["blue"]),                                                       # of no question
    ]}
    return write(tmp_path / "q.json", questions), write(tmp_path / "a.json", annotations)


def test_read_vqa_v2_entries_paths_and_skips(official: tuple[Path, Path], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    questions, annotations = official
    with caplog.at_level(logging.WARNING, logger="vlkit.data"):
        entries, skipped = read_vqa_v2(questions, annotations, tmp_path / "coco")
    image = tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert [(e.images, e.text, e.answers, e.idx, e.label) for e in entries] == [
        ((image,), "How many cats?", ("2", "2", "2", "3"), 420, -1),
        ((image,), "Is it a dog?", ("yes", "yes", "no"), 421, -1),
    ]
    assert skipped == 4
    log = caplog.text
    assert str(questions) in log and "skipped 4 of 6 questions" in log
    assert "question 2: question_id 70: no non-negative integer `image_id`" in log
    assert "question_id 71: no annotation" in log and "question_id 72: its annotation is malformed" in log
    assert "question 5: duplicate question_id 420" in log
    assert str(annotations) in log and "skipped 1 of 4 annotations" in log and "no `answers` list" in log

    with pytest.raises(AnnotationError, match=re.escape(f"{questions}: 4 of 6 questions")):
        read_vqa_v2(questions, annotations, tmp_path, max_bad_fraction=0.5)
    with pytest.raises(AnnotationError, match=re.escape(f"{annotations}: 1 of 4 annotations")):
        read_vqa_v2(questions, annotations, tmp_path, max_bad_fraction=0.2)

    flat, _ = read_vqa_v2(questions, annotations, tmp_path / "coco", image_folder="")
    assert flat[0].images == (tmp_path / "coco" / "COCO_val2014_000000000042.jpg",)
    other, _ = read_vqa_v2(questions, annotations, tmp_path, image_folder="images/val")
    assert other[1].images == (tmp_path / "images" / "val" / "COCO_val2014_000000000042.jpg",)


def test_read_vqa_v2_test_split_has_no_answers(tmp_path: Path) -> None:
    questions = write(tmp_path / "test-dev.json", {"data_subtype": "test-dev2015", "questions": [
        {"image_id": 1, "question": "What?", "question_id": 10},
        {"image_id": 2, "question": "", "question_id": 20},
    ]})
    entries, skipped = read_vqa_v2(questions, None, tmp_path)
    # test-dev questions are about test2015 images, named so.
    assert len(entries) == 1 and skipped == 1
    assert entries[0].images == (tmp_path / "test2015" / "COCO_test2015_000000000001.jpg",)
    assert entries[0].answers == () and entries[0].idx == 10 and entries[0].text == "What?"


def test_read_vqa_v2_errors_name_the_file(official: tuple[Path, Path], tmp_path: Path) -> None:
    questions, annotations = official
    broken = tmp_path / "broken.json"
    broken.write_text('{"questions": [')
    with pytest.raises(AnnotationError, match=re.escape(f"{broken}: cannot read the VQA v2 questions file")):
        read_vqa_v2(broken, None, tmp_path)
    with pytest.raises(AnnotationError, match=re.escape(f"{broken}: cannot read the VQA v2 annotations")):
        read_vqa_v2(questions, broken, tmp_path)
    albef = write(tmp_path / "albef.json", [{"question_id": 1, "image": "x.jpg", "question": "q", "answer": ["a"]}])
    with pytest.raises(AnnotationError, match=re.escape(f'{albef}: expected the official VQA v2 questions file, '
                                                        'a JSON object with a "questions" list') + ".*ALBEF"):
        read_vqa_v2(albef, None, tmp_path)
    with pytest.raises(AnnotationError, match=re.escape(f"{questions}: expected") + ".*is it the questions file"):
        read_vqa_v2(questions, questions, tmp_path)                       # questions given as annotations
    with pytest.raises(AnnotationError, match=re.escape(f"{annotations}: expected") + ".*is it the annotations"):
        read_vqa_v2(annotations, annotations, tmp_path)
    no_subtype = write(tmp_path / "nosub.json", {"questions": []})
    with pytest.raises(AnnotationError, match=re.escape(f"{no_subtype}: no \"data_subtype\"")):
        read_vqa_v2(no_subtype, None, tmp_path)
    train = write(tmp_path / "train_a.json", {"data_subtype": "train2014",
                                              "annotations": [annotation(5, 9, ["x"]), annotation(6, 9, ["y"])]})
    with pytest.raises(AnnotationError, match=re.escape(f"{train}: none of its 2 annotations") +
                       ".*'val2014'.*'train2014'.*same split"):
        read_vqa_v2(questions, train, tmp_path)
    empty = write(tmp_path / "empty_a.json", {"annotations": []})
    with pytest.raises(AnnotationError, match="none of its 0 annotations"):
        read_vqa_v2(questions, empty, tmp_path)


def test_is_vqa_v2_questions_tells_the_formats_apart(official: tuple[Path, Path], tmp_path: Path) -> None:
    questions, annotations = official
    assert is_vqa_v2_questions(questions)
    assert not is_vqa_v2_questions(annotations)
    assert not is_vqa_v2_questions(write(tmp_path / "albef.json", [{"question": "q"}]))
    assert not is_vqa_v2_questions(write(tmp_path / "odd.json", {"questions": {"1": "q"}}))
    assert not is_vqa_v2_questions(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("not json at all")
    assert not is_vqa_v2_questions(tmp_path / "text.json")
    # A header longer than the peeked first MiB is still read to its end.
    long = write(tmp_path / "long.json", {"info": {"note": "x" * (1 << 20)}, "data_subtype": "val2014",
                                          "questions": []})
    assert is_vqa_v2_questions(long)
    assert not is_vqa_v2_questions(write(tmp_path / "long_a.json", {"info": "x" * (1 << 20), "annotations": []}))
