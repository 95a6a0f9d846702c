"""The interface every encoder shares: ``encode_image``, ``encode_text``, ``fuse``.

Encoders compute representations, never losses. What they return is kept in small dataclasses
named with ALBEF's vocabulary (``embeds`` are tokens, ``feat`` the projected, L2-normalized [CLS]
used by contrastive objectives) so that the step context of the training loop can memoize them and
hand the same encoding to several objectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from vlkit.core.encodings import FusedEncoding, ImageEncoding, ImageKV, PatchMask, TextEncoding
from vlkit.core.weight_source import WeightSource
from vlkit.nn.attention import Backend
from vlkit.nn.bert import BertStack
from vlkit.nn.checkpointing import CheckpointedBlock, set_grad_checkpointing, transformer_blocks
from vlkit.schema import ComponentConfig

__all__ = ["Encoder", "EncoderConfig", "FusedEncoding", "ImageEncoding", "ImageKV", "TextEncoding", "l2_normalize"]


@dataclass(kw_only=True)
class EncoderConfig(ComponentConfig):
    """Settings every encoder has.

    Attributes:
        size: a preset (``tiny`` for tests on the CPU, ``base`` as in the papers, ``large``); keys
            the recipe sets itself override the preset.
        attention: attention kernel: ``auto`` (xformers on CUDA when installed, else sdpa),
            ``xformers``, ``sdpa`` or ``math`` (reference).
        grad_checkpointing: activation checkpointing of every transformer block, non-reentrant:
            recomputes block activations in backward to save memory (same losses and gradients,
            about one more forward of the blocks per step); the momentum teacher runs without grad
            and is unaffected.
    """

    size: str = "base"
    attention: Backend = "auto"
    grad_checkpointing: bool = False

    supports_fusion: ClassVar[bool] = True
    """The encoder has a fusion path (ITM, MLM); a dual encoder does not."""

    @property
    def has_vl_path(self) -> bool:
        """The encoder computes VLMo's second contrastive feature (``vl_feat``)."""
        return False

    def tower_inits(self) -> dict[str, WeightSource]:
        """The pre-trained weights this config names, by tower (``image``, ``text``; ``""`` for a single
        tower such as MoME's): what :func:`vlkit.weights.apply.initialize_towers` loads."""
        return {}

    def without_tower_inits(self) -> EncoderConfig:
        """A copy that names no pre-trained weights (random initialization everywhere)."""
        return self

    @property
    def packs_text(self) -> bool:
        """The encoder packs each batch's real text tokens into one sequence (another shape every batch)."""
        return False

    @property
    def input_size(self) -> int:
        """Side in pixels of the square images the encoder takes."""
        raise NotImplementedError

    @property
    def max_text_tokens(self) -> int:
        """Longest text (in tokens, [CLS] included) the encoder accepts."""
        raise NotImplementedError


def l2_normalize(x: Tensor) -> Tensor:
    """Unit length along the last axis."""
    return F.normalize(x, dim=-1)


def contrastive_feat(encoding: ImageEncoding | TextEncoding) -> Tensor:
    """``encoding.feat`` ``[B, E]`` (what ``encode_image`` / ``encode_text`` compute), for a caller that
    needs it; a ``RuntimeError`` where the encoding has none."""
    if encoding.feat is None:
        raise RuntimeError(f"this {type(encoding).__name__} has no contrastive feature (feat)")
    return encoding.feat


class Encoder(nn.Module):
    """Base class of vlkit encoders.

    Subclasses implement :meth:`encode_image` and :meth:`encode_text`; fusion encoders also
    :meth:`fuse` (and set ``supports_fusion``), and may override :meth:`image_kv` to return
    image-side work that several fusion passes can share.
    """

    supports_fusion: ClassVar[bool] = False

    init_reports: tuple[Any, ...] = ()
    """What the recipe's tower ``init`` keys loaded when this encoder was built, one
    :class:`vlkit.weights.LoadReport` per key (empty: random initialization)."""

    def hold_head_weights(self, head: str, state: dict[str, Tensor]) -> None:
        """Keep weights a tower checkpoint brought for a head built later over this encoder (BERT's MLM
        head under ``"mlm"``, in the head's own key layout)."""
        self.__dict__.setdefault("_held_head_weights", {})[head] = state

    def take_head_weights(self, head: str) -> dict[str, Tensor] | None:
        """The weights held for ``head``, handed over once (None when there are none)."""
        return self.__dict__.get("_held_head_weights", {}).pop(head, None)

    def drop_untaken_head_weights(self) -> list[str]:
        """Forget the held weights no head took (e.g. BERT's MLM head in a recipe without ``mlm``);
        returns the names of those heads."""
        return sorted(self.__dict__.pop("_held_head_weights", {}))

    @property
    def embed_dim(self) -> int:
        """Width ``E`` of the contrastive features."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Width ``D`` of fused tokens (what ITM and MLM heads read)."""
        raise NotImplementedError

    def word_embeddings(self) -> nn.Embedding:
        """The text token embedding table (BERT ties its MLM decoder to it)."""
        raise NotImplementedError

    def image_geometry(self) -> tuple[int, int, int]:
        """``(patch_size, patches, width)`` of the image tokens: pixels per patch side, patches per
        image, token width (what a masked-image-modelling head reads)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its image patches")

    supports_patch_mask: ClassVar[bool] = False
    """:meth:`encode_image` takes a ``patch_mask`` (masked image modelling)."""

    def encode_image(self, images: Tensor, *, patch_mask: PatchMask | None = None) -> ImageEncoding:
        """``[B, 3, H, W]`` normalized images → :class:`ImageEncoding`; ``patch_mask`` hides the patches it
        names behind its token (encoders with ``supports_patch_mask``)."""
        raise NotImplementedError

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, *, unimodal: bool = True,
                    lengths: Sequence[int] | None = None) -> TextEncoding:
        """``[B, L]`` token ids and mask → :class:`TextEncoding`.

        ``unimodal=False`` computes only what :meth:`fuse` needs (no contrastive feature), e.g. for
        masked text that is only ever fused. ``lengths``: the ``B`` token counts as host ints (the
        mask's row sums, known to the collate function) for encoders that pack text; others ignore it.
        """
        raise NotImplementedError

    def image_kv(self, image: ImageEncoding) -> ImageKV:
        """Image-side state reusable by several :meth:`fuse` calls with the same images (or None)."""
        return None

    def fusion_stack(self) -> BertStack | None:
        """The BERT stack whose cross-attention layers fuse text with image tokens (ALBEF), for parts
        built from it (NLVR2's bi-fusion layers, VQA's answer decoder, Grad-CAM grounding); None for
        encoders that fuse otherwise (MoME) or not at all (dual)."""
        return None

    def fuse(self, image: ImageEncoding, text: TextEncoding, *, image_index: Tensor | None = None,
             text_index: Tensor | None = None, image_kv: ImageKV = None) -> FusedEncoding:
        """Fuse pairs ``(image[image_index[i]], text[text_index[i]])``.

        Args:
            image: the image batch ``B_i``.
            text: the text batch ``B_t``.
            image_index: ``[B']`` long rows of ``image`` (None: all, in order).
            text_index: ``[B']`` long rows of ``text`` (None: all, in order).
            image_kv: what :meth:`image_kv` returned for ``image`` (computed here if None).
        """
        raise NotImplementedError(f"{type(self).__name__} has no fusion layers (a dual encoder); "
                                  "objectives that fuse (itm, mlm) need an albef or mome encoder")

    def blocks(self) -> list[CheckpointedBlock]:
        """The transformer blocks (:class:`~vlkit.nn.checkpointing.CheckpointedBlock`) in module order:
        the units of activation checkpointing and of sharding."""
        return transformer_blocks(self)

    def set_grad_checkpointing(self, on: bool = True) -> int:
        """Turn activation checkpointing of every transformer block on or off; returns how many blocks."""
        return set_grad_checkpointing(self, on)

    def parts(self) -> dict[str, list[nn.Module | nn.Parameter]]:
        """Named groups of sub-modules (or loose parameters) for parameter reports, e.g. vision,
        text, fusion; together they should hold every parameter once."""
        return {"all": [self]}
