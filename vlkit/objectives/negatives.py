"""Negative samplers for image-text matching (registry kind ``negatives``).

Each draws, for every sample ``b`` of the batch, a negative image for text ``b`` and a negative text
for image ``b`` in one vectorized ``torch.multinomial`` call (no Python loop, no host sync). Which
candidates are never drawn is the sampler's ``exclude`` setting:

- ``diagonal`` (the default; ALBEF's and VLMo's pre-training): only ``b``'s own pair. ALBEF's
  ``model_pretrain.py`` and VLMo's ``compute_itm_hardneg`` zero the diagonal of the sampling weights
  (``weights_i2t.fill_diagonal_(0)``), so another caption of ``b``'s image, or ``b``'s image appearing
  twice in the batch, can be drawn as a "negative".
- ``same_image``: every candidate with ``b``'s image ``idx`` (its positive and the other captions of its
  image). ALBEF's retrieval fine-tuning masks these (``model_retrieval.py``: ``masked_fill_(idx == idx.T, 0)``).

A row with no admissible candidate (batch size 1; with ``same_image``, every sample of the batch from
one image) gets a placeholder index and a zero weight, so its negative pair contributes nothing to the
loss instead of crashing ``multinomial`` ("invalid multinomial distribution") or teaching a wrong label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from vlkit import dist
from vlkit.core.encodings import ImageEncoding, TextEncoding
from vlkit.core.errors import ConfigError
from vlkit.core.similarity import Negatives
from vlkit.core.step import StepView
from vlkit.registry import register
from vlkit.schema import ComponentConfig

__all__ = ["ExclusionConfig", "GlobalHardNegatives", "GlobalHardNegativesConfig", "HardNegativesConfig",
           "InBatchHardNegatives", "NegativeSampler", "Negatives", "RandomNegatives", "SamplerConfig", "admissible",
           "candidates", "draw", "masked_softmax"]

Exclusion = Literal["diagonal", "same_image"]


def draw(weights: Tensor) -> tuple[Tensor, Tensor]:
    """One sample per row of non-negative ``weights`` ``[B, C]`` (need not be normalized).

    Returns:
        ``index`` ``[B]`` and ``valid`` ``[B]`` (float); rows whose weights are all zero (or not
        finite) draw uniformly and are marked invalid.
    """
    weights = torch.nan_to_num(weights.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    valid = weights.sum(1) > 0
    safe = torch.where(valid[:, None], weights, torch.ones_like(weights))
    return torch.multinomial(safe, 1).squeeze(1), valid.float()


def admissible(idx: Tensor) -> Tensor:
    """``[B, B]`` bool: True where column ``j`` may be a negative of row ``b`` (different image)."""
    return idx[:, None] != idx[None, :]


def candidates(idx: Tensor, exclude: Exclusion, columns: Tensor | None = None, offset: int = 0) -> Tensor:
    """``[B, N]`` bool: True where column ``j`` may be a negative of row ``b``.

    Args:
        idx: the rows' image ids ``[B]``.
        exclude: ``diagonal``: every column but the row's own (column ``offset + b``); ``same_image``:
            every column of another image id.
        columns: the columns' image ids ``[N]`` (default: ``idx``, the batch against itself).
        offset: the column of row 0's own pair (a rank's first row in a gathered global batch).
    """
    columns = idx if columns is None else columns
    if exclude == "same_image":
        return idx[:, None] != columns[None, :]
    own = torch.arange(idx.shape[0], device=idx.device) + offset
    return torch.arange(columns.shape[0], device=idx.device)[None, :] != own[:, None]


@dataclass(kw_only=True)
class SamplerConfig(ComponentConfig):
    """Settings every negative sampler has (a sampler registered without a config gets this one)."""

    needs_similarity: ClassVar[bool] = False
    """The sampler reads the step's contrastive similarities (``step.sim`` / ``step.global_sim``), so the
    recipe needs an objective that provides them (e.g. ``itc``)."""


class NegativeSampler:
    """Base of negative samplers (registry kind ``negatives``): built from their validated config (None:
    the defaults), ``sample(step) -> Negatives``."""

    def __init__(self, cfg: SamplerConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else SamplerConfig()

    def sample(self, step: StepView) -> Negatives:
        raise NotImplementedError


@dataclass(kw_only=True)
class ExclusionConfig(SamplerConfig):
    """Settings every built-in sampler has.

    Attributes:
        exclude: which candidates are never negatives of sample ``b``: ``diagonal`` (ALBEF's and VLMo's
            pre-training: only ``b``'s own pair; another caption of its image may be drawn) or
            ``same_image`` (every pair with ``b``'s image ``idx``, as ALBEF's retrieval fine-tuning).
    """

    exclude: Exclusion = "diagonal"


@register("negatives", "random")
class RandomNegatives(NegativeSampler):
    """Uniform over the other images / texts of the batch (the ALBEF ablation's 'MLM + ITM')."""

    Config = ExclusionConfig

    def __init__(self, cfg: ExclusionConfig | None = None) -> None:
        super().__init__()
        self.cfg: ExclusionConfig = cfg if cfg is not None else ExclusionConfig(type="random")

    def sample(self, step: StepView) -> Negatives:
        ok = candidates(step.batch.idx, self.cfg.exclude).float()
        image_index, image_valid = draw(ok)
        text_index, text_valid = draw(ok)
        return Negatives(image_index, text_index, image_valid, text_valid)


def masked_softmax(logits: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the allowed entries of each row (0 elsewhere; all-zero rows stay zero)."""
    probs = torch.softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=1)
    return torch.nan_to_num(probs, nan=0.0)


@dataclass(kw_only=True)
class HardNegativesConfig(ExclusionConfig):
    """Settings of the similarity-weighted samplers (and ``exclude``, :class:`ExclusionConfig`).

    Attributes:
        ramp_steps: curriculum for training from scratch (a vlkit option; 0 = the papers). The
            sampling weights are ``softmax(h · logits)`` with the hardness ``h`` rising linearly from 0
            (uniform: random negatives) at step 0 to 1 (ALBEF's ``softmax(logits)``) at ``ramp_steps``.
            From random initialization, hard negatives from the first step leave ITM at the constant
            answer "no match": the fusion layers never find out which image tokens matter.
    """

    ramp_steps: int = 0

    needs_similarity: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.ramp_steps < 0:
            raise ConfigError(f"ramp_steps must be ≥ 0, got {self.ramp_steps}", key="ramp_steps")

    def hardness(self, step: int) -> float:
        """Multiplier of the contrastive logits at 0-based ``step``, in [0, 1]."""
        return 1.0 if self.ramp_steps == 0 else min(1.0, step / self.ramp_steps)


@register("negatives", "in_batch_hard")
class InBatchHardNegatives(NegativeSampler):
    """ALBEF's hard negatives: candidates drawn with probability softmax(contrastive logits), within
    the batch, the positive (``exclude: diagonal``) or every same-``idx`` pair (``same_image``) excluded."""

    Config = HardNegativesConfig

    def __init__(self, cfg: HardNegativesConfig | None = None) -> None:
        super().__init__()
        self.cfg: HardNegativesConfig = cfg if cfg is not None else HardNegativesConfig(type="in_batch_hard")

    @torch.no_grad()
    def sample(self, step: StepView) -> Negatives:
        sim = step.sim
        ok = candidates(step.batch.idx, self.cfg.exclude)
        hardness = self.cfg.hardness(step.index)
        # hard negative text for each image, hard negative image for each text
        text_index, text_valid = draw(masked_softmax(sim.i2t * hardness, ok))
        image_index, image_valid = draw(masked_softmax(sim.t2i * hardness, ok))
        return Negatives(image_index, text_index, image_valid, text_valid)


@dataclass(kw_only=True)
class GlobalHardNegativesConfig(HardNegativesConfig):
    """Settings of ``global_hard``.

    Attributes:
        gather: what the ranks exchange. ``inputs`` (VLMo): the images, token ids and masks; the
            drawn negatives are re-encoded on this rank, with gradient into its towers. ``encodings``
            (fusion encoders): the towers' outputs, gathered with gradient (the owning rank's towers
            receive it, as in one process over the global batch); no re-encoding, but the gathered
            token tensors (``[N, M, D]`` images, ``[N, L, D]`` texts) are large.
    """

    gather: Literal["inputs", "encodings"] = "inputs"


@register("negatives", "global_hard")
class GlobalHardNegatives(InBatchHardNegatives):
    """VLMo's hard negatives: for each of this rank's samples, a negative image and a negative text
    drawn from the global batch of every rank by softmax(contrastive logits), its positive
    (``exclude: diagonal``, VLMo) or every same-``idx`` pair (``same_image``) excluded. In one process
    the global batch is the local one and this is ``in_batch_hard`` exactly (no re-encoding)."""

    Config = GlobalHardNegativesConfig

    def __init__(self, cfg: GlobalHardNegativesConfig | None = None) -> None:
        super().__init__()
        self.cfg: GlobalHardNegativesConfig = cfg if cfg is not None else GlobalHardNegativesConfig(type="global_hard")

    def sample(self, step: StepView) -> Negatives:
        if not dist.is_distributed():
            return super().sample(step)
        batch = step.batch
        with torch.no_grad():
            sim = step.global_sim
            idx_all = step.memo("gather:no_grad:idx", lambda: dist.all_gather_no_grad(batch.idx))
            # columns in rank order, equal batches (the gathers above): this rank's own pairs start at rank · B
            ok = candidates(batch.idx, self.cfg.exclude, columns=idx_all, offset=dist.rank() * batch.size)
            hardness = self.cfg.hardness(step.index)
            text_index, text_valid = draw(masked_softmax(sim.i2t * hardness, ok))
            image_index, image_valid = draw(masked_softmax(sim.t2i * hardness, ok))
        if self.cfg.gather == "encodings":
            return Negatives(image_index, text_index, image_valid, text_valid,
                             images=_gather_image_encoding(step.image), texts=_gather_text_encoding(step.text))
        if batch.images is None or batch.input_ids is None or batch.attention_mask is None:
            raise RuntimeError("gathering hard negatives by input needs the batch's images and texts")
        with torch.no_grad():
            images = dist.all_gather_no_grad(batch.images)[image_index]
            input_ids = dist.all_gather_padded(batch.input_ids, dim=1)[text_index]
            mask = dist.all_gather_padded(batch.attention_mask, dim=1)[text_index]
        rows = torch.arange(batch.size, device=batch.idx.device)
        return Negatives(rows, rows, image_valid, text_valid, images=step.encode_image(images),
                         texts=step.encode_text(input_ids, mask))


def _pad(x: Tensor, length: int) -> Tensor:
    """``[B, L, ...]`` zero-padded along dim 1 to ``length`` (differentiable)."""
    if x.shape[1] == length:
        return x
    return torch.cat((x, x.new_zeros((x.shape[0], length - x.shape[1], *x.shape[2:]))), dim=1)


def _gather_or_none(x: Tensor | None) -> Tensor | None:
    return None if x is None else dist.all_gather_with_grad(x)


def _gather_image_encoding(image: ImageEncoding) -> ImageEncoding:
    """The token tensors fusion reads, gathered with gradient (contrastive features left out)."""
    return ImageEncoding(embeds=_gather_or_none(image.embeds), inputs=_gather_or_none(image.inputs))


def _gather_text_encoding(text: TextEncoding) -> TextEncoding:
    """Token tensors and masks of every rank (padded to the longest text), gathered with gradient."""
    longest = max(dist.sizes(text.mask.shape[1]))
    return TextEncoding(embeds=_gather_or_none(None if text.embeds is None else _pad(text.embeds, longest)),
                        mask=dist.all_gather_no_grad(_pad(text.mask, longest)),
                        inputs=_gather_or_none(None if text.inputs is None else _pad(text.inputs, longest)))
