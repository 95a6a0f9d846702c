"""The official VQA v2 files (``v2_OpenEnded_mscoco_<split>_questions.json``, ``v2_mscoco_<split>_annotations.json``).

- questions: ``{"info", "task_type", "data_type", "data_subtype": "train2014", "questions":
  [{"image_id": int, "question": str, "question_id": int}, ...], ...}``;
- annotations (none for the test splits): ``{"annotations": [{"question_id", "image_id", "question_type",
  "answer_type", "multiple_choice_answer", "answers": [{"answer": str, "answer_confidence", "answer_id"},
  ...]}, ...], ...}``.

Each question becomes a :class:`~vlkit.data.formats.task_data.TaskEntry` with its COCO image
``COCO_<data_subtype>_<image_id:012d>.jpg``, the question, its annotators' answers normalized as the official
evaluation does, and ``idx = question_id``. ALBEF's pre-processed VQA list is read by
:func:`~vlkit.data.formats.task_data.parse_vqa`; :func:`is_vqa_v2_questions` tells the two apart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlkit.data.formats.task_data import TaskEntry
from vlkit.data.json_dataset import MAX_LOGGED, AnnotationError
from vlkit.data.safe_io import MAX_ANNOTATION_BYTES, Unusable, file_problem, read_json_bounded, unicode_problem
from vlkit.data.vqa_normalize import normalize_answer

log = logging.getLogger("vlkit.data")

IMAGE_SUBTYPE: dict[str, str] = {"test-dev2015": "test2015"}
"""Question subtypes whose images belong to another COCO split (test-dev is a subset of test2015)."""

_PEEK_CHARS = 1 << 20  # is_vqa_v2_questions reads this much first; the official header fits easily


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_object(path: Path, key: str, kind: str) -> dict[str, Any]:
    """The JSON object of an official ``kind`` file, which must hold a ``key`` list."""
    try:
        data = read_json_bounded(path)
    except Unusable as err:
        raise AnnotationError(f"{path}: cannot read the VQA v2 {kind} file: {err}") from None
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return data
    hint = ""
    if isinstance(data, list):
        hint = " (a JSON list is ALBEF's pre-processed VQA format, read by the `vqa` task's ALBEF reader)"
    elif isinstance(data, dict):
        other = next((k for k in ("questions", "annotations") if k != key and isinstance(data.get(k), list)), None)
        hint = f" (it holds a `{other}` list: is it the {other} file?)" if other else ""
    raise AnnotationError(f'{path}: expected the official VQA v2 {kind} file, a JSON object with a "{key}" '
                          f"list, not a {type(data).__name__}{' without one' if isinstance(data, dict) else ''}"
                          + hint)


def _report(path: Path, bad: list[str], total: int, what: str, max_bad_fraction: float) -> None:
    """Log the skipped items of ``path``; an :class:`AnnotationError` beyond ``max_bad_fraction``."""
    if not bad:
        return
    named = "; ".join(bad[:MAX_LOGGED]) + ("; ..." if len(bad) > MAX_LOGGED else "")
    log.warning("%s: skipped %d of %d %s (%s)", path, len(bad), total, what, named)
    if len(bad) > max_bad_fraction * total:
        raise AnnotationError(f"{path}: {len(bad)} of {total} {what} are malformed or unannotated (limit "
                              f"data.max_bad_fraction={max_bad_fraction:g}): {named}")


def _question_problem(item: Any, seen: set[int]) -> str | None:
    if not isinstance(item, dict):
        return f"not a mapping but {type(item).__name__}"
    if not _is_int(item.get("question_id")):
        return "no integer `question_id`"
    if item["question_id"] in seen:
        return f"duplicate question_id {item['question_id']}"
    if not _is_int(item.get("image_id")) or item["image_id"] < 0:
        return f"question_id {item['question_id']}: no non-negative integer `image_id`"
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        return f"question_id {item['question_id']}: no `question`"
    if (problem := unicode_problem(item["question"])) is not None:
        return f"question_id {item['question_id']}: the `question` is {problem}"
    return None


def _annotation_answers(item: Any, seen: dict[int, Any]) -> tuple[str, ...] | str:
    """An annotation's normalized answers, or why it is unusable."""
    if not isinstance(item, dict):
        return f"not a mapping but {type(item).__name__}"
    qid = item.get("question_id")
    if not _is_int(qid):
        return "no integer `question_id`"
    if qid in seen:
        return f"duplicate question_id {qid}"
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        return f"question_id {qid}: no `answers` list"
    if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        return f'question_id {qid}: an answer without an "answer" string'
    if any(unicode_problem(a["answer"]) is not None for a in answers):
        return f"question_id {qid}: an answer is not valid Unicode (a lone surrogate)"
    return tuple(normalize_answer(a["answer"]) for a in answers)


def read_vqa_v2(questions: Path, annotations: Path | None, image_root: Path, *, image_folder: str | None = None,
                max_bad_fraction: float = 1.0) -> tuple[list[TaskEntry], int]:
    """Entries of an official VQA v2 questions file (with its annotations file, None for a test split) and
    the number of questions skipped.

    Args:
        questions: the questions file; its ``data_subtype`` (e.g. ``"train2014"``) names the COCO images
            (``"test-dev2015"`` questions use the ``test2015`` images).
        annotations: the matching annotations file, or None: entries then have no answers.
        image_root: where the COCO image folders are.
        image_folder: the images' folder inside ``image_root``; None: the image subtype (``train2014``),
            ``""``: ``image_root`` itself.
        max_bad_fraction: the largest tolerated fraction of skipped questions (or of malformed
            annotations) per file; beyond it an :class:`AnnotationError` naming the file and the first
            reasons.

    Returns:
        ``(entries, skipped)``: entries in question-file order, ``TaskEntry(images=(path,), text=question,
        answers=normalized answers (one per annotator, file order), idx=question_id)``; ``skipped`` counts
        the questions left out (malformed, or without a usable annotation). Skipped questions and
        malformed annotations are logged with the file and the first few reasons.

    Raises:
        AnnotationError: a file is unreadable, not JSON or not the expected structure; the questions have no
            ``data_subtype``; none of the questions is annotated in ``annotations`` (files of different
            splits); too many malformed items.
    """
    qdata = _read_object(questions, "questions", "questions")
    subtype = qdata.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise AnnotationError(f'{questions}: no "data_subtype" (e.g. "train2014") to name the COCO images by')
    image_subtype = IMAGE_SUBTYPE.get(subtype, subtype)
    folder = Path(image_root) / (image_subtype if image_folder is None else image_folder)

    answers: dict[int, tuple[str, ...]] | None = None
    broken: set[int] = set()  # question ids whose annotation is malformed
    adata: dict[str, Any] = {}
    if annotations is not None:
        adata = _read_object(annotations, "annotations", "annotations")
        answers, bad_annotations = {}, []
        for index, item in enumerate(adata["annotations"]):
            parsed = _annotation_answers(item, answers)
            if isinstance(parsed, str):
                bad_annotations.append(f"annotation {index}: {parsed}")
                if isinstance(item, dict) and _is_int(item.get("question_id")) and item["question_id"] not in answers:
                    broken.add(item["question_id"])
            else:
                answers[item["question_id"]] = parsed
        _report(annotations, bad_annotations, len(adata["annotations"]), "annotations", max_bad_fraction)

    items = qdata["questions"]
    if answers is not None and items and not any(
            isinstance(q, dict) and (q.get("question_id") in answers or q.get("question_id") in broken) for q in items):
        raise AnnotationError(
            f"{annotations}: none of its {len(adata['annotations'])} annotations is of one of the {len(items)} "
            f"questions of "
            f"{questions} (question data_subtype {subtype!r}, annotation data_subtype "
            f"{adata.get('data_subtype')!r}): are they files of the same split?")

    entries: list[TaskEntry] = []
    bad: list[str] = []
    seen: set[int] = set()
    for index, item in enumerate(items):
        problem = _question_problem(item, seen)
        if problem is None and answers is not None and item["question_id"] not in answers:
            qid = item["question_id"]
            problem = f"question_id {qid}: " + ("its annotation is malformed" if qid in broken else "no annotation")
        if problem is not None:
            bad.append(f"question {index}: {problem}")
            continue
        qid = item["question_id"]
        seen.add(qid)
        image = folder / f"COCO_{image_subtype}_{item['image_id']:012d}.jpg"
        entries.append(TaskEntry(images=(image,), text=item["question"].strip(),
                                 answers=answers[qid] if answers is not None else (), idx=qid,
                                 source=str(questions), index=index))
    _report(questions, bad, len(items), "questions", max_bad_fraction)
    return entries, len(bad)


def is_vqa_v2_questions(path: Path) -> bool:
    """Whether ``path`` looks like an official VQA v2 questions file (a JSON object with a ``"questions"``
    list) rather than ALBEF's VQA list. Cheap: only the top-level keys before ``"questions"`` are parsed
    (the file's first MiB, unless they run longer), never the questions. False for unreadable files."""
    if file_problem(path, MAX_ANNOTATION_BYTES) is not None:  # no FIFO, device or oversized file is opened
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(_PEEK_CHARS)
            complete = len(head) < _PEEK_CHARS
            found = _has_top_level_list(head, "questions")
            if found is None and not complete:
                found = _has_top_level_list(head + f.read(MAX_ANNOTATION_BYTES), "questions")
    except OSError:
        return False
    return bool(found)


def _has_top_level_list(text: str, key: str) -> bool | None:
    """Whether the JSON object in ``text`` has a ``key`` whose value is a list; None when ``text`` ends
    (or stops being JSON) before that is known."""
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if not text.startswith("{", pos):
        return False if pos < len(text) else None
    pos += 1
    try:
        while True:
            pos = _skip_space(text, pos)
            if text.startswith("}", pos):
                return False
            name, pos = decoder.raw_decode(text, pos)
            pos = _skip_space(text, pos)
            if not isinstance(name, str) or not text.startswith(":", pos):
                return None
            pos = _skip_space(text, pos + 1)
            if name == key:
                return True if text.startswith("[", pos) else (False if pos < len(text) else None)
            _, pos = decoder.raw_decode(text, pos)
            pos = _skip_space(text, pos)
            if text.startswith(",", pos):
                pos += 1
            elif not text.startswith("}", pos):
                return None
    except (json.JSONDecodeError, ValueError):
        return None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos
