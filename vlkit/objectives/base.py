"""The objective plug-in contract.

An objective is a small ``nn.Module`` with a name, a weight, its own parameters (temperature,
queues, heads it owns) and ``forward(step) -> ObjectiveOutput``. It asks the step context for the
encodings it needs and never encodes anything itself; side effects (queue updates) happen in
``after_step``, called after the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from vlkit.schema import ComponentConfig

if TYPE_CHECKING:
    from vlkit.data.tokens import TextTokens
    from vlkit.encoders.base import Encoder


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

    def weight_at(self, step: int) -> float:
        """The loss weight at 0-based step ``step`` (a Python float)."""
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps)

    requires_fusion: ClassVar[bool] = False
    """The objective fuses images and text (needs an albef or mome encoder)."""
    provides_similarity: ClassVar[bool] = False
    """The objective defines in-batch contrastive logits that hard-negative samplers read."""
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


@dataclass
class ObjectiveContext:
    """What an objective may need when it is built.

    Attributes:
        encoder: the online encoder (widths, vocabulary, word embeddings to tie heads to).
        tokens: special-token ids and vocabulary size of the recipe's tokenizer.
    """

    encoder: Encoder
    tokens: TextTokens | None = None


@dataclass
class ObjectiveOutput:
    """What an objective returns for one step.

    Attributes:
        loss: scalar loss (before the recipe weight is applied).
        metrics: extra scalars to log (detached tensors; logged every N steps, never ``.item()``-ed here).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of objectives.

    Args:
        cfg: the validated recipe section.
        name: the instance name in the recipe (``objectives.<name>``), used in log keys.
        ctx: the encoder and tokenizer facts the objective may need to build its heads.
    """

    Config: type[ObjectiveConfig] = ObjectiveConfig

    def __init__(self, cfg: ObjectiveConfig, name: str, ctx: ObjectiveContext | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = name

    @property
    def needs_teacher(self) -> bool:
        return self.cfg.needs_teacher

    def teacher_modules(self) -> dict[str, nn.Module]:
        """Modules of this objective the momentum teacher must copy (e.g. the MLM head for MLM
        distillation), by short name; the teacher exposes them as ``"<objective>.<name>"``."""
        return {}

    def init_aliases(self) -> dict[str, str]:
        """Where ``init_from`` finds weights this objective's own names lack in a checkpoint: own key
        (relative to the objective, e.g. ``"decoder.layer.0.attention.self.query.weight"``) → checkpoint
        key (e.g. ``"encoder.text_encoder.encoder.layer.6.attention.self.query.weight"``). ALBEF's VQA
        decoder starts from the fusion layers this way. Default: none."""
        return {}

    def batch_transform(self) -> Any:
        """A picklable callable the data loader applies to each collated batch (e.g. MLM masking),
        or None."""
        return None

    @property
    def weight(self) -> float:
        return self.cfg.weight

    def forward(self, step: Any) -> ObjectiveOutput:
        """Compute this objective's loss from the shared step context."""
        raise NotImplementedError

    def after_step(self, step: Any) -> None:
        """Side effects after the optimizer step (e.g. enqueue momentum features). Default: none."""
