"""ALBEF's generative VQA (``vqa.head: rank``): a causal decoder over question states, per-answer NLL,
candidate ranking checked against scoring every candidate by brute force, initialization from the
pre-trained fusion layers and MLM head, and a tiny fine-tuning run that answers above the floor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlkit.heads.answer_decoder import AnswerDecoder, sequence_nll
from vlkit.nn.bert import BertConfig
from vlkit.objectives.answers import rank_answers
from vlkit.train.pretrain import Pretraining, run_pretraining
from vlkit.weights.init_from import load_matching

CFG = BertConfig(vocab_size=50, dim=32, layers=2, heads=4, intermediate=64, max_positions=16, dropout=0.0,
                 attention_dropout=0.0)


@pytest.fixture(scope="module")
def decoder() -> AnswerDecoder:
    torch.manual_seed(0)
    return AnswerDecoder(CFG, backend="math").eval()


def question(batch: int = 3, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    states = torch.randn(batch, length, CFG.dim)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 5:] = False
    return states, mask


def test_decoder_is_causal(decoder: AnswerDecoder) -> None:
    states, mask = question(2)
    ids = torch.randint(5, 50, (2, 6))
    ids[:, 0] = 1
    kv = decoder.question_kv(states)
    before = decoder(ids, torch.ones_like(ids), kv, mask)
    changed = ids.clone()
    changed[:, 4:] = 7
    after = decoder(changed, torch.ones_like(ids), kv, mask)
    torch.testing.assert_close(after[:, :4], before[:, :4])  # earlier positions never see later tokens
    assert not torch.allclose(after[:, 4:], before[:, 4:])


def test_sequence_nll_sums_the_next_token_losses_of_real_tokens(decoder: AnswerDecoder) -> None:
    logits = torch.randn(2, 5, 50)
    ids = torch.tensor([[1, 8, 9, 2, 0], [1, 11, 2, 0, 0]])
    mask = (ids != 0).long()
    expected = [sum(F.cross_entropy(logits[r, t][None], ids[r, t + 1][None]).item()
                    for t in range(4) if mask[r, t + 1]) for r in range(2)]
    torch.testing.assert_close(sequence_nll(logits, ids, mask), torch.tensor(expected))


def brute_force_scores(decoder: AnswerDecoder, states: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor,
                       candidate_mask: torch.Tensor, twice: bool) -> torch.Tensor:
    """``[B, C]``: every candidate decoded alone under every question."""
    out = torch.empty(states.shape[0], candidates.shape[0])
    for b in range(states.shape[0]):
        kv = decoder.question_kv(states[b:b + 1])
        for c in range(candidates.shape[0]):
            ids, m = candidates[c:c + 1], candidate_mask[c:c + 1]
            logits = decoder(ids, m, kv, mask[b:b + 1])
            score = -sequence_nll(logits, ids, m)[0]
            if twice:
                score = score + logits[0, 0].log_softmax(-1)[ids[0, 1]]
            out[b, c] = score
    return out


@pytest.mark.parametrize("twice", [True, False])
def test_ranking_all_candidates_picks_the_brute_force_best(decoder: AnswerDecoder, twice: bool) -> None:
    torch.manual_seed(1)
    states, mask = question(4)
    candidates = torch.randint(5, 50, (9, 4))
    candidates[:, 0], candidates[:, -1] = 1, 2
    candidates[3, 2:] = torch.tensor([2, 0])  # a shorter answer, padded
    candidate_mask = (candidates != 0).long()
    expected = brute_force_scores(decoder, states, mask, candidates, candidate_mask, twice).argmax(1)
    got = rank_answers(decoder, states, mask, candidates, candidate_mask, k=9, first_token_twice=twice, pair_batch=5)
    assert got.tolist() == expected.tolist()


def test_ranking_considers_only_the_top_k_first_tokens(decoder: AnswerDecoder) -> None:
    torch.manual_seed(2)
    states, mask = question(3)
    candidates = torch.randint(5, 50, (12, 3))
    candidates[:, 0], candidates[:, -1] = 1, 2
    candidate_mask = torch.ones_like(candidates)
    kv = decoder.question_kv(states)
    first = decoder(candidates[:1, :1].expand(3, 1), torch.ones(3, 1, dtype=torch.long), kv, mask)[:, 0]
    allowed = first.softmax(-1)[:, candidates[:, 1]].topk(3, dim=1).indices
    got = rank_answers(decoder, states, mask, candidates, candidate_mask, k=3)
    full = brute_force_scores(decoder, states, mask, candidates, candidate_mask, True)
    for row in range(3):
        assert got[row] in allowed[row]
        assert got[row] == allowed[row][full[row, allowed[row]].argmax()]


def test_decoder_starts_from_the_fusion_layers_and_mlm_head(tmp_path: Path, task_recipe) -> None:
    pre = Pretraining(task_recipe(tmp_path, "train.steps=1"), tmp_path / "pre", train_data=False)
    state = pre.model.state_dict()
    tuned = Pretraining(task_recipe(tmp_path, "task={type: vqa, head: rank, distill: {alpha: 0.4}}", "train.steps=1",
                                    "momentum.warmup_steps=0"), tmp_path / "ft", train_data=False)
    objective = tuned.model.objectives["vqa"]
    report = load_matching(tuned.model, state, {f"objectives.vqa.{k}": v for k, v in objective.init_aliases().items()})
    stack = pre.model.encoder.text_encoder
    first_fusion = stack.fusion_layer
    decoder = objective.head
    torch.testing.assert_close(decoder.encoder.layer[0].crossattention.self.query.weight,
                               stack.layers[first_fusion].crossattention.self.query.weight)
    torch.testing.assert_close(decoder.encoder.layer[1].intermediate.dense.weight,
                               stack.layers[first_fusion + 1].intermediate.dense.weight)
    torch.testing.assert_close(decoder.embeddings.word_embeddings.weight, stack.embeddings.word_embeddings.weight)
    torch.testing.assert_close(decoder.cls.predictions.transform.dense.weight,
                               pre.model.objectives["mlm"].head.predictions.transform.dense.weight)
    assert decoder.cls.predictions.decoder.weight is decoder.embeddings.word_embeddings.weight  # still tied
    teacher = tuned.model.teacher.modules_by_name["vqa.head"]  # the teacher's copy mirrors the online decoder
    torch.testing.assert_close(teacher.encoder.layer[0].attention.self.key.weight,
                               decoder.encoder.layer[0].attention.self.key.weight)
    assert not any(name.startswith("objectives.vqa.") for name in report.new)


@pytest.mark.slow
def test_generative_vqa_fine_tunes_above_the_most_frequent_answer(tmp_path: Path, task_recipe) -> None:
    recipe = task_recipe(tmp_path / "data", "task={type: vqa, head: rank, k_test: 16}", "train.steps=200",
                         "train.head_lr_mult=1", "train.lr=5e-4")
    metrics = run_pretraining(recipe, tmp_path / "run", progress=False)
    assert metrics["vqa_acc"] >= metrics["most_frequent_acc"] + 10.0, metrics


def test_vqa_task_reads_albef_lists_and_official_v2_pairs_in_one_split(tmp_path: Path) -> None:
    import json

    from vlkit.tasks.vqa import VQA, VQAConfig

    albef = [{"question_id": 1, "image": "x/a.jpg", "question": "what colour?", "answer": ["Red", "red", "blue"]}]
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 7, "question": "how many?", "question_id": 70},
        {"image_id": 8, "question": "is it?", "question_id": 80}]}
    annotations = {"annotations": [
        {"question_id": 70, "image_id": 7, "answers": [{"answer": "Two"}, {"answer": "2"}, {"answer": "three"}]},
        {"question_id": 80, "image_id": 8, "answers": [{"answer": "yes."}, {"answer": "yes"}]}]}
    test_questions = {"data_subtype": "test2015", "questions": [{"image_id": 9, "question": "why?", "question_id": 90}]}
    for name, content in (("albef.json", albef), ("q.json", questions), ("a.json", annotations),
                          ("tq.json", test_questions)):
        (tmp_path / name).write_text(json.dumps(content))
    files = [str(tmp_path / n) for n in ("albef.json", "q.json", "a.json", "tq.json")]
    task = VQA(VQAConfig(type="vqa", splits={"train": files}, image_root=str(tmp_path)))
    entries = task.entries(None, "train")  # type: ignore[arg-type]  # files and root come from the config
    assert [e.idx for e in entries] == [1, 70, 80, 90]
    assert entries[0].images == (tmp_path / "x/a.jpg",) and entries[0].answers == ("red", "red", "blue")
    assert entries[1].images == (tmp_path / "val2014" / "COCO_val2014_000000000007.jpg",)
    assert entries[1].answers == ("2", "2", "3") and entries[2].answers == ("yes", "yes") and entries[3].answers == ()
    (tmp_path / "list.json").write_text(json.dumps(["Two", "2", "yes", "The dog"]))
    listed = VQA(VQAConfig(type="vqa", answer_list=str(tmp_path / "list.json")))
    assert listed.answers(None, None) == ["2", "yes", "dog"]  # type: ignore[arg-type]  # normalized, deduplicated
