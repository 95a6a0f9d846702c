"""The plug-in example of docs/extending.md: defined outside vlkit, used from recipes, trained."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vlkit import registry
from vlkit.recipe import RecipeError, load_recipe
from vlkit.train.pretrain import Pretraining

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "examples" / "plugins"
SMALL = ["data.source.train_images=32", "data.source.val_images=4", "data.source.test_images=4",
         "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5",
         "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1"]


@pytest.fixture(autouse=True)
def plugins_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def train_a_few_steps(recipe_file: str, tmp_path: Path, steps: int = 3) -> Pretraining:
    recipe = load_recipe(PLUGINS / recipe_file, [*SMALL, f"data.source.root={tmp_path / 'data'}",
                                                 f"train.steps={steps}"])
    run = Pretraining(recipe, tmp_path / "run")
    trainer = run.trainer(progress=False)
    trainer.fit()
    return run


def test_siglip_objective_trains_from_a_recipe(tmp_path):
    run = train_a_few_steps("siglip_dual_tiny.yaml", tmp_path)
    assert set(run.model.objectives) == {"siglip"}
    siglip = run.model.objectives["siglip"]
    # its learnable scale and bias are model parameters and were updated by the optimizer
    assert siglip.bias.item() != -10.0 and siglip.log_scale.item() != pytest.approx(math.log(10.0))
    assert "siglip" in registry.names("objective")


def test_siglip_loss_matches_the_formula():
    from vlkit_siglip import SigLIP, SigLIPConfig

    from vlkit.core.step import Memo

    class FakeStep(Memo):
        def __init__(self, image, text, idx):
            super().__init__()
            self.image = type("I", (), {"feat": image})()
            self.text = type("T", (), {"feat": text})()
            self.batch = type("B", (), {"idx": idx})()

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    idx = torch.tensor([0, 1, 1])
    objective = SigLIP(SigLIPConfig(type="siglip", init_scale=10.0, init_bias=-10.0))
    loss = objective(FakeStep(image, text, idx)).loss
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if idx[i] == idx[j] else -1.0
            logit = 10.0 * float(image[i] @ text[j]) - 10.0
            expected += math.log1p(math.exp(-z * logit))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)


def test_custom_sampler_and_head_train_in_albef(tmp_path):
    run = train_a_few_steps("albef_hardest_tiny.yaml", tmp_path)
    itm = run.model.objectives["itm"]
    assert type(itm.sampler).__name__ == "HardestNegatives" and type(itm.head).__name__ == "MLPMatchHead"
    assert torch.isfinite(itm.head.hidden.weight).all()


def test_a_misspelled_plugin_setting_names_the_nearest_key():
    with pytest.raises(RecipeError, match="did you mean `init_bias`"):
        load_recipe(PLUGINS / "siglip_dual_tiny.yaml", ["objectives.siglip.init_bais=1.0"])
