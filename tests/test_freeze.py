"""The recipe's ``freeze``: matched parameters keep their values through training, the others train."""

from __future__ import annotations

import pytest
import torch

from vlkit.train.freeze import freeze_parameters
from vlkit.train.pretrain import Pretraining

torch.set_num_threads(1)


def test_frozen_parameters_do_not_change_and_trainable_ones_do(tmp_path, small_recipe):
    recipe = small_recipe(tmp_path, "albef/tiny", "train.steps=3", "train.cpu_threads=1", "momentum.warmup_steps=0",
                          "freeze=[encoder.visual_encoder.*, objectives.itm.head.*]")
    run = Pretraining(recipe, tmp_path / "run")
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    frozen = [n for n, p in run.model.named_parameters() if n.startswith(("encoder.visual_encoder.",
                                                                          "objectives.itm.head."))]
    assert frozen and all(not p.requires_grad for n, p in run.model.named_parameters() if n in frozen)
    run.trainer(progress=False).fit()
    after = dict(run.model.named_parameters())
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    for name in ("encoder.text_encoder.embeddings.word_embeddings.weight", "encoder.text_proj.weight"):
        assert not torch.equal(after[name], before[name]), name
    # the teacher's copies of frozen weights stay equal to them (an EMA of a constant)
    teacher = dict(run.model.teacher.copies.named_parameters())
    assert torch.equal(teacher["encoder.visual_encoder.pos_embed"], before["encoder.visual_encoder.pos_embed"])


def test_a_pattern_that_matches_nothing_names_close_parameters():
    model = torch.nn.ModuleDict({"encoder": torch.nn.ModuleDict({"text_proj": torch.nn.Linear(2, 2)})})
    with pytest.raises(ValueError, match=r"`encoder.txt_proj.\*` matches no trainable parameter.*encoder.text_proj"):
        freeze_parameters(model, ["encoder.txt_proj.*"])
    report = freeze_parameters(model, ["encoder.text_proj.bias"])
    assert (report.frozen, report.trainable, report.frozen_tensors) == (2, 4, 1)
    assert "4 of 6 parameters trainable" in report.summary()
