"""The recipe's ``data`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from vlkit.core.ranges import check_count, check_number, is_finite
from vlkit.schema import Component, ConfigError

MAX_WORKERS = 1024
"""More loader processes than this is a typo."""

MAX_RANDAUGMENT_OPS = 100
"""ALBEF draws 2 of its 10 operations; far more is a typo (each one runs per image)."""


@dataclass(kw_only=True)
class RandAugmentConfig:
    """ALBEF's RandAugment (:mod:`vlkit.data.randaugment`): ``num_ops`` operations drawn with
    replacement, each applied with probability 0.5 at ``magnitude`` of 10 (ALBEF, VLMo: 2 and 7)."""

    num_ops: int = 2
    magnitude: float = 7.0

    def __post_init__(self) -> None:
        check_count("num_ops", self.num_ops, low=0, high=MAX_RANDAUGMENT_OPS)
        check_number("magnitude", self.magnitude, 0, 10)


@dataclass(kw_only=True)
class DataConfig:
    """Where training and evaluation data come from and how text and images are prepared.

    Attributes:
        source: the dataset source (registry kind ``dataset``): ``synthetic`` or ``json_pairs``.
        train_split: split used for training.
        tokenizer: a BERT tokenizer folder or hub name; null uses the source's own (synthetic).
        max_text_len: token limit per caption, [CLS] included (ALBEF pre-training: 25 / 30).
        drop_sep: drop the trailing [SEP] of single sentences (ALBEF's tokenizer does; VLMo keeps it).
        normalize: image normalization statistics: ``clip`` (ALBEF), ``inception`` (VLMo), ``imagenet``.
        normalize_on_device: the loader hands over uint8 images and the training device normalizes them
            (4× less pinned memory and host→device traffic, and no float work in the loader workers).
        crop_scale: random-resized-crop scale range for training images; null: plain resize.
        flip: random horizontal flips (they make 'left of' captions false; off by default).
        randaugment: ALBEF's RandAugment after crop and flip (ALBEF/VLMo: ``{num_ops: 2, magnitude: 7}``);
            null: off.
        pre_caption: clean captions as ALBEF does (lower-case, strip punctuation, first ``max_words``
            words) before tokenizing, in training and evaluation.
        max_words: word limit of ``pre_caption`` (ALBEF: 30).
        padding: text batch width: ``longest`` (ALBEF), ``max_length`` (static shapes), ``multiple_of_8``.
        draft_decode: decode large JPEGs at a reduced DCT scale that still covers the transform's
            resolution (``Image.draft``; see :func:`vlkit.data.transforms.decode_size`).
        max_bad_fraction: tolerated fraction of malformed annotation entries (per file, checked before
            training; beyond it the file is rejected as having the wrong schema) and of unreadable
            images (checked as training goes; beyond it the run saves a checkpoint and stops).
        num_workers: data-loader worker processes (0: load in the training process).
        modality: what a training sample holds: ``pair`` (image and caption), ``image`` or ``text``;
            null: the source's own (pairs for synthetic, json_pairs, webdataset; images for image_only,
            texts for text_only). ``image`` / ``text`` on a pair source train on one side of its pairs
            (stage-wise pre-training on the same data). Image- and text-only runs have no retrieval evaluation.
        group_batches: keep annotation entries that share a ``group`` value next to each other in the
            training order, so they share a batch (hard-negative batching; the synthetic data groups
            each image with its compositional twin). Off: a plain shuffle, as the papers.
    """

    source: Annotated[Any, Component("dataset")]
    train_split: str = "train"
    tokenizer: str | None = None
    max_text_len: int = 30
    drop_sep: bool = False
    normalize: Literal["clip", "inception", "imagenet"] = "clip"
    normalize_on_device: bool = False
    crop_scale: list[float] | None = None
    flip: bool = False
    randaugment: RandAugmentConfig | None = None
    pre_caption: bool = False
    max_words: int = 30
    padding: Literal["longest", "max_length", "multiple_of_8"] = "longest"
    draft_decode: bool = True
    max_bad_fraction: float = 0.01
    num_workers: int = 1
    group_batches: bool = False
    modality: Literal["pair", "image", "text"] | None = None

    def __post_init__(self) -> None:
        if self.max_text_len < 2:
            raise ConfigError("must be at least 2 ([CLS] and one word)", key="max_text_len")
        check_count("max_text_len", self.max_text_len)
        scale = self.crop_scale
        if scale is not None and (len(scale) != 2 or not all(is_finite(s) for s in scale)
                                  or not 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"must be [min, max] with 0 < min ≤ max ≤ 1, got {self.crop_scale}", key="crop_scale")
        check_number("max_bad_fraction", self.max_bad_fraction, 0, 1)
        check_count("max_words", self.max_words)
        check_count("num_workers", self.num_workers, low=0, high=MAX_WORKERS)
        if not self.train_split:
            raise ConfigError("must name a split, e.g. train", key="train_split")
