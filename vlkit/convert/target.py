"""The vlkit model a conversion targets, built from a recipe exactly as training builds it (encoder,
the recipe's objectives or its task's, the momentum teacher), so that every converted key can be
checked against a real parameter name and shape. Built on the ``meta`` device for the checks (no
memory, any size); :meth:`Target.initial_values` builds parts of it for real only when weights must be
initialized by vlkit."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vlkit import registry
from vlkit.build import build_encoder, build_objectives, build_pretrain_model
from vlkit.encoders.base import EncoderConfig
from vlkit.models.model import PretrainModel
from vlkit.objectives.base import Objective
from vlkit.objectives.itc import ITC, ITCConfig
from vlkit.recipe import Recipe
from vlkit.tasks.classification import FusedClassificationTask

log = logging.getLogger("vlkit.convert")


def objective_configs(recipe: Recipe, num_classes: int | None = None) -> dict[str, Any]:
    """The objectives the recipe trains: its task's when the task brings its own (``vlkit finetune``),
    else ``recipe.objectives``. ``num_classes`` stands in for a classification task's class count
    (VQA as classification reads it from the answer list) so that no data has to be read."""
    if recipe.task is None:
        return dict(recipe.objectives)
    task = registry.get("task", recipe.task.type).target(recipe.task)
    if not task.trains_own_objectives:
        return dict(recipe.objectives)
    if recipe.data is None:
        raise ValueError(f"task `{recipe.task.type}` needs the recipe's data section to size its objectives")
    if num_classes is not None and isinstance(task, FusedClassificationTask):
        task.known_classes = num_classes  # the checkpoint's head fixes the class count
    source = registry.get("dataset", recipe.data.source.type).target(recipe.data.source)  # not prepared
    return task.objective_configs(source, recipe.data)


def build_model(recipe: Recipe, device: str | torch.device = "meta", num_classes: int | None = None) -> PretrainModel:
    """The recipe's model (encoder + objectives + teacher) on ``device``."""
    encoder = build_encoder(recipe.encoder, device=device)
    with torch.device(device):
        return build_pretrain_model(encoder, objective_configs(recipe, num_classes), recipe.momentum)


@dataclass
class Target:
    """What a conversion checks against: the recipe's model structure.

    Attributes:
        recipe: the validated recipe.
        model: the model on the ``meta`` device.
        shapes: every state-dict key → its shape.
        tied: key → the other keys that name the very same tensor (e.g. an MLM decoder tied to the
            word embeddings; the pairs of NLVR2's bi-fusion sharing cross-attention keys/values).
        aliases: model key → checkpoint key ``init_from`` would initialize it from (objectives' own).
        num_classes: the class count given to a classification task.
    """

    recipe: Recipe
    model: PretrainModel
    shapes: dict[str, torch.Size] = field(default_factory=dict)
    tied: dict[str, list[str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    num_classes: int | None = None

    @classmethod
    def build(cls, recipe: Recipe, num_classes: int | None = None) -> Target:
        """The recipe's model on ``meta`` and its key facts."""
        model = build_model(recipe, "meta", num_classes)
        state = model.state_dict(keep_vars=True)
        by_tensor: dict[int, list[str]] = {}
        for key, value in state.items():
            by_tensor.setdefault(id(value), []).append(key)
        tied = {k: [o for o in group if o != k] for group in by_tensor.values() if len(group) > 1 for k in group}
        return cls(recipe=recipe, model=model, shapes={k: v.shape for k, v in state.items()}, tied=tied,
                   aliases=model.init_aliases(), num_classes=num_classes)

    def has(self, key: str) -> bool:
        return key in self.shapes

    def has_component(self, prefix: str) -> bool:
        """Whether the model holds any key under ``prefix`` (or the key itself)."""
        return any(k == prefix or k.startswith(prefix) for k in self.shapes)

    def objective(self, *kinds: type[Objective], names: tuple[str, ...] = ()) -> str | None:
        """Name of the first objective of one of the classes ``kinds`` (or named one of ``names``), None if none."""
        for name, objective in self.model.objective_list():
            if isinstance(objective, kinds) or name in names:
                return name
        return None

    def itc_config(self) -> ITCConfig | None:
        """The config of the recipe's first contrastive (``itc``) objective, None if it has none."""
        name = self.objective(ITC)
        if name is None:
            return None
        cfg = self.model.objectives[name].cfg
        assert isinstance(cfg, ITCConfig)
        return cfg

    @property
    def encoder_cfg(self) -> EncoderConfig:
        return self.recipe.encoder

    def initial_values(self, keys: list[str]) -> dict[str, Tensor]:
        """vlkit's own initialization of ``keys`` (the recipe's seed), built on the CPU: only the
        objectives when that is enough (a queue, a new head), else the whole model. Towers the recipe
        would start from pre-trained weights (``init``) start from random ones here."""
        if not keys:
            return {}
        torch.manual_seed(self.recipe.seed)
        if all(k.startswith("objectives.") for k in keys):
            encoder = self.model.encoder  # on meta: what the objectives read from it is its shape
            objectives = build_objectives(objective_configs(self.recipe, self.num_classes), encoder)
            state = {f"objectives.{name}.{k}": v for name, o in objectives.items() for k, v in o.state_dict().items()}
            if all(k in state and not state[k].is_meta for k in keys):
                return {k: state[k] for k in keys}
        log.info("building the recipe's model on the CPU for the weights the checkpoint does not provide")
        recipe = copy.deepcopy(self.recipe)
        recipe.encoder = recipe.encoder.without_tower_inits()
        torch.manual_seed(recipe.seed)
        state = build_model(recipe, "cpu", self.num_classes).state_dict()
        return {k: state[k] for k in keys}
