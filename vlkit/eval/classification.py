"""Metrics of classification-style downstream tasks: accuracy (VE, NLVR2) and the VQA accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from vlkit.data.vqa_normalize import normalize_answer


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Percent of ``predictions`` equal to ``labels``."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return 100.0 * sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)


def vqa_accuracy(prediction: str, answers: Sequence[str], *, normalize: bool = True) -> float:
    """The VQA accuracy of one prediction (Antol et al.; the official evaluation): averaged over every
    leave-one-annotator-out subset, ``min(#annotators in the subset who gave the prediction / 3, 1)``.
    With 10 annotators this is the standard metric; ``[0, 1]``.

    With ``normalize`` the prediction and every answer are compared as
    :func:`~vlkit.data.vqa_normalize.normalize_answer` writes them (``"Two"`` matches ``"2"``). The official
    script normalizes only when the annotators disagree, and the annotators' answers only partly (punctuation);
    here both sides always get the full normalization, so a prediction is judged the same whatever the
    annotators' spelling."""
    if normalize:
        prediction = normalize_answer(prediction)
        answers = [normalize_answer(a) for a in answers]
    if not answers:
        return 0.0
    if len(answers) == 1:
        return float(answers[0] == prediction)
    matches = [a == prediction for a in answers]
    total = sum(matches)
    return sum(min((total - m) / 3.0, 1.0) for m in matches) / len(answers)


def mean_vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]], *,
                      normalize: bool = True) -> float:
    """Percent: the mean :func:`vqa_accuracy` over questions (``normalize`` as there)."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    return 100.0 * sum(vqa_accuracy(p, a, normalize=normalize)
                       for p, a in zip(predictions, answers, strict=True)) / len(answers)
