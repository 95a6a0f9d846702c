"""Objectives against the reference formulas (ALBEF / VLMo / ALIGN), on small hand-checkable cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.batch import Batch
from vlkit.core.similarity import Similarity
from vlkit.data.loader_requests import batch_transforms
from vlkit.data.tokens import TextTokens
from vlkit.encoders.albef import AlbefConfig
from vlkit.models.momentum import MomentumConfig
from vlkit.objectives.distill import DistillConfig
from vlkit.objectives.itc import ITC, FeatureQueue, ITCConfig
from vlkit.objectives.itm import ITMConfig
from vlkit.objectives.mlm import MLMConfig, gather_positions
from vlkit.objectives.negatives import (
    ExclusionConfig,
    HardNegativesConfig,
    InBatchHardNegatives,
    RandomNegatives,
    draw,
    masked_softmax,
)
from vlkit.schema import ConfigError

TOKENS = TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=30522)


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


class FakeStep:
    """Just what ITC reads: features, idx, step index, a memo."""

    def __init__(self, img, txt, idx, img_m=None, txt_m=None, index=0, vl=None):
        self.image = SimpleNamespace(feat=img, vl_feat=None if vl is None else vl[0])
        self.text = SimpleNamespace(feat=txt, vl_feat=None if vl is None else vl[1])
        self.teacher = SimpleNamespace(image=SimpleNamespace(feat=img_m), text=SimpleNamespace(feat=txt_m))
        self.batch = SimpleNamespace(idx=idx, size=len(idx))
        self.index = index
        self.teacher_steps = index  # a teacher without warm-up: consulted from step 0
        self.teacher_ready = img_m is not None
        self._memo = {}

    def memo(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]


# --------------------------------------------------------------------------- ITC
def test_itc_in_batch_is_symmetric_cross_entropy():
    """CLIP form: loss = (CE(img·txtᵀ/τ, diag) + CE(txt·imgᵀ/τ, diag)) / 2."""
    torch.manual_seed(0)
    img, txt = unit(5, 8), unit(5, 8)
    itc = ITC(ITCConfig(type="itc", temperature=0.1))
    out = itc(FakeStep(img, txt, torch.arange(5)))
    labels = torch.arange(5)
    expected = (F.cross_entropy(img @ txt.T / 0.1, labels) + F.cross_entropy(txt @ img.T / 0.1, labels)) / 2
    torch.testing.assert_close(out.loss, expected)


def test_itc_idx_targets_make_captions_of_one_image_positives():
    torch.manual_seed(1)
    img, txt = unit(4, 8), unit(4, 8)
    idx = torch.tensor([7, 7, 3, 9])  # rows 0 and 1 are captions of the same image
    out = ITC(ITCConfig(type="itc", temperature=0.5))(FakeStep(img, txt, idx))
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    ce = lambda logits: -(targets * F.log_softmax(logits, 1)).sum(1).mean()  # noqa: E731
    torch.testing.assert_close(out.loss, (ce(img @ txt.T / 0.5) + ce(txt @ img.T / 0.5)) / 2)


def test_itc_label_smoothing():
    torch.manual_seed(2)
    img, txt = unit(3, 4), unit(3, 4)
    out = ITC(ITCConfig(type="itc", temperature=0.2, label_smoothing=0.1))(FakeStep(img, txt, torch.arange(3)))
    labels = torch.arange(3)
    expected = (F.cross_entropy(img @ txt.T / 0.2, labels, label_smoothing=0.1)
                + F.cross_entropy(txt @ img.T / 0.2, labels, label_smoothing=0.1)) / 2
    torch.testing.assert_close(out.loss, expected)


def test_itc_queue_and_distillation_follow_albef():
    """ALBEF model_pretrain.py: columns = [momentum features; queue], targets = α·softmax(teacher sims)
    + (1 − α)·diag, loss = mean of the two soft cross-entropies; α ramps linearly."""
    torch.manual_seed(3)
    b, e, q, temp = 4, 6, 8, 0.07
    img, txt, img_m, txt_m = unit(b, e), unit(b, e), unit(b, e), unit(b, e)
    itc = ITC.build(ITCConfig(type="itc", temperature=temp, queue_size=q, idx_targets=False,
                              distill=DistillConfig(alpha=0.4, ramp_steps=10)),
                    "itc", SimpleNamespace(encoder=SimpleNamespace(embed_dim=e)))
    image_queue, text_queue = itc.queue.image_queue.clone(), itc.queue.text_queue.clone()
    out = itc(FakeStep(img, txt, torch.arange(b), img_m, txt_m, index=5))
    alpha = 0.4 * 5 / 10
    image_all = torch.cat([img_m.T, image_queue], 1)  # [E, B+Q], ALBEF's layout
    text_all = torch.cat([txt_m.T, text_queue], 1)
    sim_targets = torch.zeros(b, b + q)
    sim_targets.fill_diagonal_(1)
    t_i2t = alpha * F.softmax(img_m @ text_all / temp, 1) + (1 - alpha) * sim_targets
    t_t2i = alpha * F.softmax(txt_m @ image_all / temp, 1) + (1 - alpha) * sim_targets
    loss_i2t = -(F.log_softmax(img @ text_all / temp, 1) * t_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(txt @ image_all / temp, 1) * t_t2i).sum(1).mean()
    torch.testing.assert_close(out.loss, (loss_i2t + loss_t2i) / 2)


def test_feature_queue_wraps_ragged_batches_without_asserting_divisibility():
    queue = FeatureQueue(dim=2, size=5)
    for n, start in ((3, 0), (3, 3), (1, 1)):
        feats = torch.arange(n * 2, dtype=torch.float).view(n, 2) + 100 * start
        queue.enqueue(feats, -feats, torch.arange(n) + start)
    assert queue._ptr == 2 and int(queue.queue_ptr) == 2
    # ids 0-2 → slots 0-2; ids 3, 4, 5 → slots 3, 4 and (wrapping) 0; id 1 → slot 1
    assert queue.idx_queue[0].tolist() == [5, 1, 2, 3, 4]
    assert queue.image_queue[:, 0].tolist() == [304.0, 305.0]  # third row of the second batch (+300)
    queue.enqueue(torch.ones(7, 2), torch.ones(7, 2), torch.arange(7))  # larger than the queue: keeps ids 2-6
    assert queue.idx_queue[0].tolist() == [5, 6, 2, 3, 4] and queue._ptr == 2  # written from slot 2, wrapping
    state = queue.state_dict()
    fresh = FeatureQueue(dim=2, size=5)
    fresh.load_state_dict(state)
    assert fresh._ptr == queue._ptr


def test_temperature_clamped_after_the_step_and_log_scale_parametrization():
    itc = ITC(ITCConfig(type="itc", temperature=0.07, temperature_range=[0.01, 0.5]))
    with torch.no_grad():
        itc.temp.value.fill_(0.001)
    itc.after_step(SimpleNamespace())
    assert itc.temp().item() == pytest.approx(0.01)
    log_itc = ITC(ITCConfig(type="itc", parametrization="log_scale", temperature_range=None))
    assert log_itc.temp.value.item() == pytest.approx(np.log(1 / 0.07))
    assert log_itc.temp().item() == pytest.approx(0.07)


def test_itc_vl_path_averages_the_two_losses():
    torch.manual_seed(4)
    img, txt, vimg, vtxt = unit(3, 4), unit(3, 4), unit(3, 4), unit(3, 4)
    itc = ITC(ITCConfig(type="itc", temperature=0.1, vl_path=True))
    out = itc(FakeStep(img, txt, torch.arange(3), vl=(vimg, vtxt)))
    lab = torch.arange(3)
    main = (F.cross_entropy(img @ txt.T / 0.1, lab) + F.cross_entropy(txt @ img.T / 0.1, lab)) / 2
    vl = (F.cross_entropy(vimg @ vtxt.T / 0.1, lab) + F.cross_entropy(vtxt @ vimg.T / 0.1, lab)) / 2
    torch.testing.assert_close(out.loss, (main + vl) / 2)


# --------------------------------------------------------------------------- negatives
def sampler_step(idx: list[int], i2t=None, t2i=None, index: int = 0) -> SimpleNamespace:
    b = len(idx)
    return SimpleNamespace(batch=SimpleNamespace(idx=torch.tensor(idx), size=b), index=index,
                           sim=Similarity(i2t if i2t is not None else torch.randn(b, b),
                                          t2i if t2i is not None else torch.randn(b, b)))


SAME_IMAGE = [RandomNegatives(ExclusionConfig(type="random", exclude="same_image")),
              InBatchHardNegatives(HardNegativesConfig(type="in_batch_hard", exclude="same_image"))]
DIAGONAL = [RandomNegatives(), InBatchHardNegatives()]  # the default: ALBEF's and VLMo's pre-training rule


@pytest.mark.parametrize("sampler", SAME_IMAGE, ids=["random", "in_batch_hard"])
def test_same_image_samplers_never_draw_the_positive_or_a_same_idx_pair(sampler):
    torch.manual_seed(5)
    idx = [0, 0, 1, 2, 2, 2, 3, 4]
    for _ in range(200):
        neg = sampler.sample(sampler_step(idx))
        t = torch.tensor(idx)
        assert (t[neg.text_index] != t).all() and (t[neg.image_index] != t).all()
        assert neg.text_valid.all() and neg.image_valid.all()


@pytest.mark.parametrize("sampler", DIAGONAL, ids=["random", "in_batch_hard"])
def test_diagonal_samplers_exclude_only_the_own_pair(sampler):
    """ALBEF's ``weights_i2t.fill_diagonal_(0)``: another caption of the same image may be drawn."""
    assert sampler.cfg.exclude == "diagonal"
    torch.manual_seed(5)
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    rows = torch.arange(len(idx))
    same_image_draws = 0
    for _ in range(200):
        neg = sampler.sample(sampler_step(idx.tolist()))
        assert (neg.text_index != rows).all() and (neg.image_index != rows).all()
        assert neg.text_valid.all() and neg.image_valid.all()
        same_image_draws += int((idx[neg.text_index] == idx).sum() + (idx[neg.image_index] == idx).sum())
    assert same_image_draws > 0


@pytest.mark.parametrize("sampler", SAME_IMAGE + DIAGONAL, ids=["random-same_image", "in_batch_hard-same_image",
                                                                "random-diagonal", "in_batch_hard-diagonal"])
def test_batch_of_one_falls_back_cleanly(sampler):
    neg = sampler.sample(sampler_step([7]))
    assert neg.text_valid.tolist() == [0.0] and neg.image_valid.tolist() == [0.0]


@pytest.mark.parametrize("sampler", SAME_IMAGE, ids=["random", "in_batch_hard"])
def test_all_same_image_falls_back_cleanly_under_the_same_image_rule(sampler):
    neg = sampler.sample(sampler_step([3, 3, 3]))  # every row all-masked
    assert neg.text_valid.sum() == 0 and neg.image_valid.sum() == 0


@pytest.mark.parametrize("sampler", DIAGONAL, ids=["random", "in_batch_hard"])
def test_all_same_image_draws_the_other_rows_under_the_diagonal_rule(sampler):
    neg = sampler.sample(sampler_step([3, 3, 3]))  # as the official code: the other captions are "negatives"
    assert neg.text_valid.all() and neg.image_valid.all()
    assert (neg.text_index != torch.arange(3)).all() and (neg.image_index != torch.arange(3)).all()


def test_hard_negatives_follow_the_masked_softmax_of_similarities():
    torch.manual_seed(6)
    sims = torch.tensor([[5.0, 1.0, 2.0, 0.0], [0.5, 4.0, 0.0, 1.5], [1.0, 1.0, 3.0, 1.0], [0.0, 2.0, 1.0, 6.0]])
    step = sampler_step([0, 1, 2, 3], i2t=sims, t2i=sims.T.contiguous())
    counts = torch.zeros(4, 4)
    trials = 4000
    for _ in range(trials):
        neg = InBatchHardNegatives().sample(step)
        counts[torch.arange(4), neg.text_index] += 1
    expected = masked_softmax(sims, ~torch.eye(4, dtype=torch.bool))
    assert (counts.diagonal() == 0).all()
    assert torch.allclose(counts / trials, expected, atol=0.03)  # ~4σ at 4000 draws


def test_hardness_ramp_goes_from_uniform_to_albef():
    """``ramp_steps``: weights softmax(h·sim), h = step / ramp_steps capped at 1 (0: uniform)."""
    sims = torch.tensor([[5.0, 1.0, 2.0], [0.5, 4.0, 0.0], [1.0, 1.0, 3.0]])
    cfg = HardNegativesConfig(type="in_batch_hard", ramp_steps=100)
    assert [cfg.hardness(s) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    sampler = InBatchHardNegatives(cfg)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    for index, hardness in ((0, 0.0), (50, 0.5), (300, 1.0)):
        torch.manual_seed(7)
        counts = torch.zeros(3, 3)
        for _ in range(3000):
            neg = sampler.sample(sampler_step([0, 1, 2], i2t=sims, t2i=sims.T.contiguous(), index=index))
            counts[torch.arange(3), neg.text_index] += 1
        expected = masked_softmax(sims * hardness, off_diagonal)
        assert torch.allclose(counts / 3000, expected, atol=0.035), (index, counts / 3000, expected)
    with pytest.raises(ConfigError, match="ramp_steps"):
        HardNegativesConfig(type="in_batch_hard", ramp_steps=-1)


def test_draw_survives_nan_and_underflow():
    weights = torch.tensor([[float("nan"), 1.0], [0.0, 0.0], [float("inf"), 0.0]])
    index, valid = draw(weights)
    assert valid.tolist() == [1.0, 0.0, 0.0] and index[0] == 1


# --------------------------------------------------------------------------- full models
DEFAULT_MOMENTUM = MomentumConfig()


def tiny_model(objectives: dict, momentum: MomentumConfig | None = DEFAULT_MOMENTUM):
    torch.manual_seed(7)
    encoder = build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "sdpa"}))
    return build_pretrain_model(encoder, objectives, momentum)


def tiny_batch(model, b: int = 6, idx=(0, 0, 1, 2, 3, 4), seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (b, 9), generator=g)
    ids[:, 0] = TOKENS.cls_id
    mask = torch.ones(b, 9, dtype=torch.long)
    mask[3:, 6:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    batch = Batch(torch.randn(b, 3, 32, 32, generator=g), ids, mask, torch.tensor(idx[:b]))
    for transform in batch_transforms(model.loader_requests(), TOKENS):
        transform.apply_to(batch, SimpleNamespace(word_ids=None), np.random.default_rng(seed))
    return batch


def test_mlm_head_on_masked_positions_equals_full_head_loss_and_gradients():
    model = tiny_model({"mlm": MLMConfig(type="mlm")}, momentum=None).eval()
    batch = tiny_batch(model)
    mlm = model.objectives["mlm"]
    loss = model(batch).losses["loss/mlm"]
    grads = torch.autograd.grad(loss, list(mlm.head.parameters()) + [model.encoder.word_embeddings().weight])

    step = model.step(batch, 0)
    fused = step.fuse(text=step.masked_text)
    full_logits = mlm.head(fused.text)  # [B, L, V], as ALBEF computes it
    labels = torch.full(batch.input_ids.shape, -100).flatten()
    labels[batch.mlm.positions] = batch.mlm.labels
    reference = F.cross_entropy(full_logits.flatten(0, 1), labels, ignore_index=-100)
    ref_grads = torch.autograd.grad(reference, list(mlm.head.parameters()) + [model.encoder.word_embeddings().weight])
    torch.testing.assert_close(loss, reference)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_mlm_distillation_mixes_teacher_soft_labels_over_masked_positions():
    model = tiny_model({"mlm": MLMConfig(type="mlm", distill=DistillConfig(alpha=0.4))}).eval()
    with torch.no_grad():  # make the teacher differ from the student
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = tiny_batch(model)
    loss = model(batch, step_index=3).losses["loss/mlm"]
    step = model.step(batch, 3)
    pos, labels = batch.mlm.positions, batch.mlm.labels
    student = model.objectives["mlm"].head(gather_positions(step.fuse(text=step.masked_text).text, pos))
    teacher = step.teacher
    logits_m = teacher.module("mlm.head")(gather_positions(teacher.fuse(text=teacher.masked_text).text, pos))
    ce = F.cross_entropy(student, labels)
    soft = -(F.softmax(logits_m, -1) * F.log_softmax(student, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, 0.6 * ce + 0.4 * soft)


def test_itm_batch_of_one_trains_on_the_positive_only():
    model = tiny_model({"itc": ITCConfig(type="itc"), "itm": ITMConfig(type="itm")}, momentum=None).eval()
    batch = tiny_batch(model, b=1, idx=(0,))  # eval mode: the re-computation below sees the same dropout (none)
    result = model(batch)
    step = result.step
    logits = model.objectives["itm"].head(step.fuse().cls)
    torch.testing.assert_close(result.losses["loss/itm"], F.cross_entropy(logits, torch.ones(1, dtype=torch.long)))


def test_each_encoding_runs_once_per_step():
    """ITC (queue + MoD), ITM (hard negatives) and MLM (MoD) share the step's encodings."""
    model = tiny_model({
        "itc": ITCConfig(type="itc", queue_size=16, distill=DistillConfig(alpha=0.4)),
        "itm": ITMConfig(type="itm"),
        "mlm": MLMConfig(type="mlm", distill=DistillConfig(alpha=0.4)),
    })
    calls: dict[str, int] = {}

    def count(module, name, tag):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            calls[tag] = calls.get(tag, 0) + 1
            return original(*args, **kwargs)

        setattr(module, name, wrapped)

    for who, enc in (("online", model.encoder), ("teacher", model.teacher.encoder)):
        for method in ("encode_image", "encode_text", "image_kv", "fuse"):
            count(enc, method, f"{who}.{method}")
    model(tiny_batch(model))
    assert calls == {
        "online.encode_image": 1, "online.encode_text": 2,  # captions + masked captions
        "online.image_kv": 1, "online.fuse": 3,  # ITM positives (step.fused) + ITM negatives (one call) + MLM
        "teacher.encode_image": 1, "teacher.encode_text": 2,  # ITC features + MLM masked text
        "teacher.image_kv": 1, "teacher.fuse": 1,  # MLM distillation
    }


def test_ema_happens_after_the_optimizer_step_only():
    model = tiny_model({"itc": ITCConfig(type="itc", queue_size=8, distill=DistillConfig())},
                       momentum=MomentumConfig(decay=0.9))
    online = dict(model.encoder.named_parameters())
    teacher = dict(model.teacher.encoder.named_parameters())
    before = {k: v.detach().clone() for k, v in teacher.items()}
    optimizer = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    result = model(tiny_batch(model))
    for k, v in teacher.items():  # forward and backward leave the teacher alone
        assert torch.equal(v, before[k])
    result.loss.backward()
    optimizer.step()
    model.after_step(result)
    for k, v in teacher.items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * online[k].detach())
    ptr = model.objectives["itc"].queue._ptr
    assert ptr == 6  # the step's teacher features were enqueued in the same hook
    model.eval()
    with torch.no_grad():
        model(tiny_batch(model))  # evaluation forward: no EMA, no enqueue
    assert model.objectives["itc"].queue._ptr == ptr


def test_teacher_keeps_the_tied_mlm_decoder_tied():
    model = tiny_model({"mlm": MLMConfig(type="mlm", distill=DistillConfig())})
    head = model.teacher.modules_by_name["mlm.head"]
    assert head.predictions.decoder.weight is model.teacher.encoder.word_embeddings().weight
    assert model.objectives["mlm"].head.predictions.decoder.weight is model.encoder.word_embeddings().weight
