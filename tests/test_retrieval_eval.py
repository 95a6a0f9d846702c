"""Chunked retrieval evaluation: the same recalls as whole score matrices, ALBEF's re-ranking rule
checked against fusing every pair, and stable tie-breaking (the −100 outside the top-k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlkit.build import build_encoder
from vlkit.eval.retrieval import encode_gallery, evaluate_retrieval, ground_truth_ranks, recall_metrics
from vlkit.recipe import load_recipe


def _captions(counts: list[int]) -> tuple[list[list[int]], list[int]]:
    img2txt, txt2img = [], []
    for image, count in enumerate(counts):
        img2txt.append(list(range(len(txt2img), len(txt2img) + count)))
        txt2img.extend([image] * count)
    return img2txt, txt2img


@pytest.mark.parametrize("seed", range(3))
def test_ties_are_broken_by_gallery_order_like_a_stable_sort(seed: int, direct_recalls) -> None:
    rng = np.random.default_rng(seed)
    img2txt, txt2img = _captions(list(rng.integers(1, 5, size=30)))
    i2t = rng.integers(0, 4, size=(len(img2txt), len(txt2img))).astype(float)  # many ties
    t2i = rng.integers(0, 4, size=(len(txt2img), len(img2txt))).astype(float)
    got = recall_metrics(torch.from_numpy(i2t), torch.from_numpy(t2i), img2txt, txt2img)
    for key, value in direct_recalls(i2t, t2i, img2txt, txt2img).items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_ground_truth_rank_is_the_best_positive() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.0]])
    # row 0: order 1, 2, 3, 0 → positives {0, 3} rank 3 and 2; row 1: positive 2 ranks 2
    assert ground_truth_ranks(scores, [[0, 3], [2]]).tolist() == [2, 2]


@pytest.fixture(scope="module")
def gallery_case(encoder_test_shapes: list[str], text_batch):
    torch.manual_seed(0)
    encoder = build_encoder(load_recipe("albef/tiny", ["encoder.attention=sdpa", *encoder_test_shapes]).encoder).eval()
    itm_head = torch.nn.Linear(64, 2)  # the tiny fusion width
    img2txt, txt2img = _captions([1, 3, 2, 1, 2, 3, 1])  # 7 images, 13 captions
    images = torch.randn(len(img2txt), 3, 32, 32)
    ids, mask = text_batch(len(txt2img), 9)
    gallery = encode_gallery(encoder, images.split(3), ids, mask, batch_size=4, device=torch.device("cpu"))
    return encoder, itm_head, gallery, img2txt, txt2img


@pytest.mark.parametrize(("query_chunk", "pair_batch"), [(1, 1), (3, 5), (1024, 1000)])
def test_chunked_reranking_equals_fusing_every_pair(gallery_case, query_chunk: int, pair_batch: int) -> None:
    encoder, itm_head, gallery, img2txt, txt2img = gallery_case
    k = 4
    with torch.no_grad():  # reference: the ITM logit of every (image, text) pair, kept at each query's top-k
        n_i, n_t = len(img2txt), len(txt2img)
        fused = encoder.fuse(gallery.images, gallery.texts, image_index=torch.arange(n_i).repeat_interleave(n_t),
                             text_index=torch.arange(n_t).repeat(n_i))
        every = itm_head(fused.cls)[:, 1].view(n_i, n_t)
        sims = gallery.images.feat @ gallery.texts.feat.T
        top_i = sims.topk(k, 1).indices
        i2t = torch.full((n_i, n_t), -100.0).scatter(1, top_i, every.gather(1, top_i))
        top_t = sims.T.topk(k, 1).indices
        t2i = torch.full((n_t, n_i), -100.0).scatter(1, top_t, every.T.gather(1, top_t))
    expected = recall_metrics(i2t, t2i, img2txt, txt2img)
    expected_itc = recall_metrics(sims, sims.T, img2txt, txt2img)
    got = evaluate_retrieval(encoder, gallery, img2txt, txt2img, itm_head=itm_head, k_test=k, pair_batch=pair_batch,
                             query_chunk=query_chunk)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
        assert got[f"itc_{key}"] == pytest.approx(expected_itc[key], abs=1e-9), key
    assert got["n_images"] == 7 and got["n_texts"] == 13
    assert expected != expected_itc  # re-ranking changed something: the comparison is not vacuous


def test_contrastive_only_when_k_test_is_zero(gallery_case) -> None:
    encoder, itm_head, gallery, img2txt, txt2img = gallery_case
    got = evaluate_retrieval(encoder, gallery, img2txt, txt2img, itm_head=itm_head, k_test=0, pair_batch=8,
                             query_chunk=2)
    sims = gallery.images.feat @ gallery.texts.feat.T
    for key, value in recall_metrics(sims, sims.T, img2txt, txt2img).items():
        assert got[key] == pytest.approx(value, abs=1e-9) and got[f"itc_{key}"] == pytest.approx(value, abs=1e-9)
