"""Capabilities are declared, and what is declared is what happens: a plug-in's match head re-ranks
retrieval, the similarity provider is the objective whose config says so, samplers say whether they
read similarities, objectives report their own schedule values, objectives say what the loader must
prepare and which annotation fields they read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlkit
from vlkit import registry
from vlkit.build import Parts, build_encoder, build_pretrain_model
from vlkit.core import (
    MATCH_HEAD,
    Batch,
    HardNegativesRequest,
    MaskingConfig,
    ObjectiveOutput,
    PhraseRegionsRequest,
    StepView,
)
from vlkit.data.loader_requests import batch_transforms
from vlkit.data.tokens import TextTokens
from vlkit.encoders.albef import AlbefConfig
from vlkit.heads.base import HeadShape
from vlkit.models.momentum import MomentumConfig
from vlkit.objectives.base import Objective, ObjectiveConfig, PartsFactory
from vlkit.objectives.distill import DistillConfig
from vlkit.objectives.grounding import GroundingConfig
from vlkit.objectives.itc import ITCConfig
from vlkit.objectives.itm import ITMConfig
from vlkit.objectives.mlm import MLMConfig
from vlkit.objectives.negatives import Negatives, NegativeSampler, SamplerConfig
from vlkit.recipe import RecipeError, load_recipe
from vlkit.train.pretrain import Pretraining

SMALL = ["data.source.train_images=24", "data.source.val_images=4", "data.source.test_images=6",
         "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5",
         "eval.batch_size=8", "eval.k_test=3", "eval.swap_probe=false"]


@dataclass(kw_only=True)
class PositivesOnlyConfig(ObjectiveConfig):
    """A plug-in ITM-like objective: match logits on the fused positives."""


class PositivesOnly(Objective):
    """Cross-entropy of its match head towards "match" on the step's fused pairs; declares the head's role."""

    Config = PositivesOnlyConfig

    def __init__(self, cfg: PositivesOnlyConfig, name: str, *, head: nn.Module) -> None:
        super().__init__(cfg, name)
        self.head = head

    @classmethod
    def build(cls, cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> PositivesOnly:
        assert isinstance(cfg, PositivesOnlyConfig)
        return cls(cfg, name, head=parts.head("itm", HeadShape(parts.encoder.width, 2)))

    def heads(self) -> dict[str, nn.Module]:
        return {MATCH_HEAD: self.head}

    def forward(self, step: StepView) -> ObjectiveOutput:
        logits = self.head(step.fused.cls)
        return ObjectiveOutput(F.cross_entropy(logits, torch.ones(len(logits), dtype=torch.long)))


@pytest.fixture
def positives_only() -> Iterator[str]:
    vlkit.register("objective", "positives_only")(PositivesOnly)
    yield "positives_only"
    registry.unregister("objective", "positives_only")


def test_a_plugin_match_head_reranks_retrieval(positives_only: str, tmp_path: Path) -> None:
    recipe = load_recipe("albef/tiny", [*SMALL, f"data.source.root={tmp_path / 'data'}", "objectives.itm=null",
                                        f"objectives.match={{type: {positives_only}}}"])
    run = Pretraining(recipe, tmp_path / "run", train_data=False)
    head = run.model.objectives["match"].head
    assert run.model.match_head() is head
    evaluate = run.evaluator()
    assert evaluate is not None
    calls = []
    head.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    metrics = evaluate()
    assert calls, "retrieval did not re-rank with the plug-in's match head"
    assert "txt_r1" in metrics and "itc_txt_r1" in metrics


def test_without_a_match_head_retrieval_is_contrastive_only(tmp_path: Path) -> None:
    recipe = load_recipe("albef/tiny", [*SMALL, f"data.source.root={tmp_path / 'data'}", "objectives.itm=null"])
    run = Pretraining(recipe, tmp_path / "run", train_data=False)
    assert run.model.match_head() is None


def tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "sdpa"}))


def test_the_similarity_provider_is_the_objective_that_declares_it() -> None:
    encoder = tiny_encoder()
    model = build_pretrain_model(encoder, {"mlm": MLMConfig(type="mlm"), "contrast": ITCConfig(type="itc"),
                                           "itm": ITMConfig(type="itm")}, None)
    assert model.similarity == "contrast"
    assert build_pretrain_model(encoder, {"mlm": MLMConfig(type="mlm")}, None).similarity is None


def test_samplers_declare_whether_they_read_similarities() -> None:
    assert ITMConfig(type="itm").needs_similarity  # in_batch_hard, the default
    random = load_recipe("albef/tiny", ["objectives.itm.negatives=random"]).objectives["itm"]
    assert not random.needs_similarity
    with pytest.raises(RecipeError, match="samples negatives by contrastive similarity"):
        load_recipe("albef/tiny", ["objectives.itc=null"])
    assert load_recipe("albef/tiny", ["objectives.itc=null", "objectives.itm.negatives=random"])


class FirstOther(NegativeSampler):
    """A plug-in sampler registered without a config: the next row's image and text."""

    def sample(self, step: StepView) -> Negatives:
        rows = torch.arange(step.batch.size).roll(1)
        valid = (step.batch.idx[rows] != step.batch.idx).float()
        return Negatives(rows, rows, valid, valid)


def test_a_sampler_without_a_config_gets_the_declared_base() -> None:
    vlkit.register("negatives", "first_other")(FirstOther)
    try:
        itm = load_recipe("albef/tiny", ["objectives.itm.negatives=first_other"]).objectives["itm"]
        assert type(itm.negatives) is SamplerConfig and not itm.needs_similarity
        sampler = Parts(tiny_encoder()).sampler(itm.negatives)
        assert isinstance(sampler, FirstOther) and sampler.cfg is itm.negatives
    finally:
        registry.unregister("negatives", "first_other")


def test_a_sampler_config_of_the_wrong_family_is_refused() -> None:
    @dataclass(kw_only=True)
    class NotASamplerConfig(ObjectiveConfig):
        """Settings that belong to an objective, not a sampler."""

    vlkit.register("negatives", "confused", config=NotASamplerConfig)(FirstOther)
    try:
        with pytest.raises(RecipeError, match="must derive from vlkit.objectives.negatives.SamplerConfig"):
            load_recipe("albef/tiny", ["objectives.itm.negatives=confused"])
    finally:
        registry.unregister("negatives", "confused")


def test_objectives_report_their_own_schedule_values() -> None:
    """The distillation weight each objective used, as ``alpha/<objective>`` (a host float): 0 before the
    teacher is consulted, then ramping (ALBEF: over the first epoch)."""
    encoder = tiny_encoder()
    ramp = DistillConfig(alpha=0.4, ramp_steps=10)
    model = build_pretrain_model(encoder, {"itc": ITCConfig(type="itc", queue_size=16, distill=ramp),
                                           "itm": ITMConfig(type="itm"), "mlm": MLMConfig(type="mlm", distill=ramp)},
                                 MomentumConfig(warmup_steps=3)).eval()
    tokens = TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=30522)
    ids = torch.randint(1000, 2000, (4, 7))
    ids[:, 0] = tokens.cls_id
    batch = Batch(torch.randn(4, 3, 32, 32), ids, torch.ones_like(ids), torch.arange(4))
    for transform in batch_transforms(model.loader_requests(), tokens):
        transform.apply_to(batch, SimpleNamespace(word_ids=None), np.random.default_rng(0))
    assert model(batch, step_index=1).schedule == {"alpha/itc": 0.0, "alpha/mlm": 0.0}  # teacher not ready
    assert model(batch, step_index=8).schedule == pytest.approx({"alpha/itc": 0.2, "alpha/mlm": 0.2})
    assert model(batch, step_index=30).schedule == pytest.approx({"alpha/itc": 0.4, "alpha/mlm": 0.4})
    assert "metric/itc/alpha" not in model(batch, step_index=8).metrics


def test_objectives_declare_loader_work_and_annotation_fields() -> None:
    mlm = MLMConfig(type="mlm", mask_prob=0.25)
    assert mlm.loader_requests() == (MaskingConfig(mask_prob=0.25),) and mlm.annotations == frozenset()
    assert GroundingConfig(type="grounding").loader_requests() == (PhraseRegionsRequest(),)
    assert GroundingConfig(type="grounding").annotations == {"phrases"}
    assert ITMConfig(type="itm").annotations == frozenset()
    assert ITMConfig(type="itm", hard_negatives=2.0).loader_requests() == (HardNegativesRequest(),)
    assert ITMConfig(type="itm", hard_negatives=2.0).annotations == {"hard_negatives"}
