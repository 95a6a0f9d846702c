"""The objective plug-in contract.

An objective is a small ``nn.Module`` with a name, a weight, its own parameters (temperature, queues,
the heads it is given) and ``forward(step: StepView) -> ObjectiveOutput``. It asks the step for the
encodings it needs and never encodes anything itself; side effects (queue updates) happen in
``after_step``, called after the optimizer step.

Its constructor takes built parts (``ITM(cfg, head=..., sampler=...)``); :meth:`Objective.build` is
where an objective says which parts to build from its config, with the :class:`PartsFactory` the edge
(:mod:`vlkit.build`) hands it. What it needs from elsewhere is declared on its config class: the flags
below, and the loader work it asks for (:meth:`ObjectiveConfig.loader_requests`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from torch import nn

from vlkit.core.loader import LoaderRequest
from vlkit.core.outputs import ObjectiveOutput
from vlkit.core.ranges import check_count, check_number
from vlkit.core.step import StepView
from vlkit.encoders.base import Encoder
from vlkit.heads.base import HeadShape
from vlkit.objectives.negatives import NegativeSampler, SamplerConfig
from vlkit.schema import ComponentConfig

__all__ = ["Objective", "ObjectiveConfig", "ObjectiveOutput", "PartsFactory"]

ObjectiveT = TypeVar("ObjectiveT", bound="Objective")


@dataclass(kw_only=True)
class ObjectiveConfig(ComponentConfig):
    """Settings every objective has.

    Attributes:
        weight: multiplier of this objective's loss in the total loss.
        warmup_steps: the weight ramps linearly from 0 to ``weight`` over the first steps (0: full
            weight from the start); useful when training from scratch, where an objective that reads
            fused features (ITM) would otherwise push the untrained towers towards a constant output.
    """

    weight: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        """Subclasses that check their own fields call this first."""
        check_number("weight", self.weight, 0)
        check_count("warmup_steps", self.warmup_steps, low=0)

    def weight_at(self, step: int) -> float:
        """The loss weight at 0-based step ``step`` (a Python float)."""
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps)

    requires_fusion: ClassVar[bool] = False
    """The objective fuses images and text (needs an albef or mome encoder)."""
    provides_similarity: ClassVar[bool] = False
    """The objective defines the contrastive logits hard-negative samplers read (it implements
    :class:`~vlkit.core.step.SimilarityProvider`); the first such objective of a recipe provides ``step.sim``."""
    reads_boxes: ClassVar[bool] = False
    """The objective reads annotated boxes, so image augmentations must not move the pixels (no random
    crops, flips or RandAugment)."""
    modalities: ClassVar[frozenset[str]] = frozenset({"pair"})
    """What training samples it can learn from: ``pair`` (image and caption), ``image`` (image-only
    batches, e.g. masked image modelling) and/or ``text`` (text-only batches, e.g. text-only MLM)."""

    @property
    def needs_teacher(self) -> bool:
        """The objective reads the momentum teacher (the recipe's `momentum` section must be set)."""
        return False

    @property
    def needs_similarity(self) -> bool:
        """The objective reads ``step.sim`` (e.g. through a hard-negative sampler): the recipe needs an
        objective that provides similarities."""
        return False

    @property
    def needs_vl_path(self) -> bool:
        """The objective reads VLMo's second contrastive feature (the encoder must have vision-language
        experts)."""
        return False

    def loader_requests(self) -> tuple[LoaderRequest, ...]:
        """What the data loader must prepare for this objective (masking, phrase regions, hard negatives)."""
        return ()

    @property
    def annotations(self) -> frozenset[str]:
        """The annotation fields this objective reads (``phrases``, ``hard_negatives``): it has nothing to
        act on in data without them."""
        return frozenset(r.annotation for r in self.loader_requests() if r.annotation is not None)


class PartsFactory(Protocol):
    """What :meth:`Objective.build` may ask the edge for: the encoder the objective sits on, and heads and
    negative samplers built from the registry."""

    @property
    def encoder(self) -> Encoder:
        """The online encoder (widths, vocabulary, fusion stack to copy from)."""
        ...

    def head(self, name: str, shape: HeadShape) -> nn.Module:
        """The head registered as ``name`` (registry kind ``head``), built for ``shape``."""
        ...

    def sampler(self, cfg: SamplerConfig) -> NegativeSampler:
        """The negative sampler ``cfg.type`` (registry kind ``negatives``), built from ``cfg``."""
        ...


class Objective(nn.Module):
    """Base class of objectives.

    Args:
        cfg: the validated recipe section.
        name: the instance name in the recipe (``objectives.<name>``), used in log keys.
    """

    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig

    def __init__(self, cfg: ObjectiveConfig, name: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name

    @classmethod
    def build(cls: type[ObjectiveT], cfg: ObjectiveConfig, name: str, parts: PartsFactory) -> ObjectiveT:
        """Build the objective from its config, asking ``parts`` for what its constructor takes. The
        default suits objectives whose constructor takes ``(cfg, name)`` only."""
        return cls(cfg, name)

    @property
    def needs_teacher(self) -> bool:
        return self.cfg.needs_teacher

    def teacher_modules(self) -> dict[str, nn.Module]:
        """Modules of this objective the momentum teacher must copy (e.g. the MLM head for MLM
        distillation), by short name; the teacher exposes them as ``"<objective>.<name>"``."""
        return {}

    def heads(self) -> dict[str, nn.Module]:
        """The heads evaluation may use, by role (:data:`~vlkit.core.outputs.MATCH_HEAD` re-ranks retrieval
        and scores the swap probe; :data:`~vlkit.core.outputs.CLASSIFY_HEAD` classifies fused pairs)."""
        return {}

    def init_aliases(self) -> dict[str, str]:
        """Where ``init_from`` finds weights this objective's own names lack in a checkpoint: own key
        (relative to the objective, e.g. ``"decoder.layer.0.attention.self.query.weight"``) → checkpoint
        key (e.g. ``"encoder.text_encoder.encoder.layer.6.attention.self.query.weight"``). ALBEF's VQA
        decoder starts from the fusion layers this way. Default: none."""
        return {}

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def forward(self, step: StepView) -> ObjectiveOutput:
        """Compute this objective's loss from the shared step."""
        raise NotImplementedError

    def after_step(self, step: StepView) -> None:
        """Side effects after the optimizer step (e.g. enqueue momentum features). Default: none."""
