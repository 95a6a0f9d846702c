"""Fixtures shared by several test files.

Test modules never import one another (nor this file): a helper that more than one of them uses lives
here, as a fixture — its value, or for a helper function the function itself (``small_recipe(tmp_path,
"albef/tiny", ...)`` after asking for the ``small_recipe`` fixture)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from vlkit.build import build_encoder, build_pretrain_model
from vlkit.core.batch import Batch
from vlkit.data.loader_requests import batch_transforms
from vlkit.data.synthetic import SynthConfig, generate
from vlkit.data.synthetic.scene import Scene, sample_split
from vlkit.data.tokens import TextTokens
from vlkit.encoders.albef import AlbefConfig
from vlkit.models.model import PretrainModel
from vlkit.models.momentum import MomentumConfig
from vlkit.objectives.distill import DistillConfig
from vlkit.objectives.itc import ITCConfig
from vlkit.objectives.itm import ITMConfig
from vlkit.objectives.mlm import MLMConfig
from vlkit.recipe import load_recipe

if TYPE_CHECKING:
    import transformers

SMALL_SYNTHETIC = SynthConfig(seed=5, train_images=40, val_images=8, test_images=8)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset folder (40 / 8 / 8 images, with phrases and hard negatives)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SMALL_SYNTHETIC)
    return out


def _training_scenes(count: int, seed: int) -> list[Scene]:
    """``count`` scenes of the synthetic training split (1–4 objects, half of them twins)."""
    return sample_split("train", count, 0, seed=seed, image_size=64, min_objects=1, max_objects=4, twin_fraction=0.5)


@pytest.fixture(scope="session")
def training_scenes() -> Callable[[int, int], list[Scene]]:
    """``training_scenes(count, seed)``: scenes of the synthetic training split, without writing any files."""
    return _training_scenes


# --------------------------------------------------------------------------- small training runs
SMALL_DATA = ["data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8",
              "data.source.vqa_per_image=1", "data.source.ve_per_image=1", "data.source.nlvr_per_image=0.5"]


@pytest.fixture(scope="session")
def small_data() -> list[str]:
    """Recipe overrides for a small synthetic dataset (48 / 6 / 8 images, few task annotations); the
    caller adds ``data.source.root``."""
    return SMALL_DATA


def _small_recipe(tmp_path: Path, name: str = "albef/tiny", *extra: str):
    overrides = [*SMALL_DATA, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.log_every=2",
                 "train.warmup_steps=2", "eval.batch_size=8", "eval.k_test=4", *extra]
    return load_recipe(name, overrides)


@pytest.fixture(scope="session")
def small_recipe() -> Callable[..., Any]:
    """``small_recipe(tmp_path, name="albef/tiny", *extra)``: a shipped recipe on the small dataset
    (under ``tmp_path / "data"``), batch 8, with ``extra`` overrides."""
    return _small_recipe


TASK_DATA = ["data.source.train_images=600", "data.source.val_images=20", "data.source.test_images=120"]


@pytest.fixture(scope="session")
def task_data() -> list[str]:
    """Recipe overrides for a synthetic dataset large enough to fine-tune on (600 / 20 / 120 images)."""
    return TASK_DATA


def _task_recipe(root: Path, *extra: str):
    # albef/tiny, whose encoder has no text mixing (test_finetune.py's figures were measured without it; from
    # random weights 120 NLVR2 steps stayed at the majority answer with albef/tiny_grounded's, in one run)
    return load_recipe("albef/tiny", [*TASK_DATA, f"data.source.root={root}", "train.batch_size=32",
                                      "train.warmup_steps=10", "train.log_every=50", "eval.batch_size=64",
                                      "train.cpu_threads=2", *extra])


@pytest.fixture(scope="session")
def task_recipe() -> Callable[..., Any]:
    """``task_recipe(root, *extra)``: albef/tiny on the fine-tuning dataset at ``root``."""
    return _task_recipe


# --------------------------------------------------------------------------- encoder inputs
def _text_batch(b: int = 4, length: int = 9, vocab: int = 30522) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, vocab, (b, length))
    ids[:, 0] = 101
    mask = torch.ones(b, length, dtype=torch.long)
    for row in range(1, b):
        mask[row, length - 2 * row:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.fixture(scope="session")
def text_batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``text_batch(b=4, length=9, vocab=30522)``: random token ids after [CLS] and their attention mask,
    row ``r`` padded by ``2r`` tokens."""
    return _text_batch


@pytest.fixture(scope="session")
def encoder_test_shapes() -> list[str]:
    """Recipe overrides that keep encoder tests fast and fit :func:`text_batch`'s ids."""
    return ["encoder.image.image_size=32",  # 4×4 patches keep these tests fast
            "encoder.text.vocab_size=30522"]  # text_batch draws bert-base-uncased ids


# --------------------------------------------------------------------------- retrieval metrics
def _direct_recalls(i2t: np.ndarray, t2i: np.ndarray, img2txt: list[list[int]], txt2img: list[int]) -> dict:
    """ALBEF's rules, written out per query: an image's text rank is the best position of any of its
    captions among all texts sorted by score; a text's image rank the position of its image."""
    text_ranks = []
    for i, captions in enumerate(img2txt):
        order = list(np.argsort(-i2t[i], kind="stable"))
        text_ranks.append(min(order.index(c) for c in captions))
    image_ranks = [list(np.argsort(-t2i[t], kind="stable")).index(img) for t, img in enumerate(txt2img)]
    out = {}
    for name, ranks in (("txt", text_ranks), ("img", image_ranks)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
        out[f"{name}_r_mean"] = (out[f"{name}_r1"] + out[f"{name}_r5"] + out[f"{name}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


@pytest.fixture(scope="session")
def direct_recalls() -> Callable[..., dict]:
    """``direct_recalls(i2t, t2i, img2txt, txt2img)``: ALBEF's recalls computed query by query."""
    return _direct_recalls


# --------------------------------------------------------------------------- a tiny ALBEF step
TOKENS = TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=30522)
TINY_ALBEF_B, TINY_ALBEF_L = 6, 9


def _tiny_albef_model(distill: bool) -> PretrainModel:
    """ALBEF at tiny size (2 text + 2 fusion layers, 17 image tokens), ITC + ITM (in-batch hard) + MLM,
    with momentum distillation and a queue when ``distill``; eval mode (no dropout)."""
    torch.manual_seed(7)
    encoder = build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "math"}))
    mod = DistillConfig(alpha=0.4) if distill else None
    objectives = {"itc": ITCConfig(type="itc", idx_targets=False, queue_size=16 if distill else 0, distill=mod),
                  "itm": ITMConfig(type="itm"), "mlm": MLMConfig(type="mlm", distill=mod)}
    model = build_pretrain_model(encoder, objectives,
                                 MomentumConfig(warmup_steps=0) if distill else None)
    if model.teacher is not None:  # a teacher that differs from the student
        with torch.no_grad():
            for p in model.teacher.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _tiny_albef_batch(model: PretrainModel) -> Batch:
    B, L = TINY_ALBEF_B, TINY_ALBEF_L
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    ids[:, 0] = TOKENS.cls_id
    mask = torch.ones(B, L, dtype=torch.long)
    mask[3:, 6:] = 0
    batch = Batch(torch.randn(B, 3, 32, 32, generator=g), ids.masked_fill(mask == 0, 0), mask, torch.arange(B))
    for transform in batch_transforms(model.loader_requests(), TOKENS):
        transform.apply_to(batch, SimpleNamespace(word_ids=None), np.random.default_rng(0))
    return batch


@pytest.fixture(scope="session")
def tiny_albef_model() -> Callable[[bool], PretrainModel]:
    """``tiny_albef_model(distill)``: a tiny ALBEF pre-training model in fp32 with ``math`` attention, the
    same weights at every call (seeded), its teacher (with ``distill``) perturbed away from the student."""
    return _tiny_albef_model


@pytest.fixture(scope="session")
def tiny_albef_batch() -> Callable[[PretrainModel], Batch]:
    """``tiny_albef_batch(model)``: a fixed batch of ``tiny_albef_batch_shape`` (images, text, the model's
    loader work such as MLM masking done)."""
    return _tiny_albef_batch


@pytest.fixture(scope="session")
def tiny_albef_batch_shape() -> tuple[int, int]:
    """``(B, L)`` of :func:`tiny_albef_batch`: 6 pairs, 9 text positions."""
    return TINY_ALBEF_B, TINY_ALBEF_L


# --------------------------------------------------------------------------- pre-trained tower files
def _randomize_parameters(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Every parameter random (so zero-initialized tables, biases and layer scales are tested too);
    LayerNorm weights and layer scales near their usual values."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.1 if "gamma" in name else 0.0
            p.copy_(centre + std * torch.randn_like(p))
    return module


@pytest.fixture(scope="session")
def randomize_parameters() -> Callable[..., torch.nn.Module]:
    """``randomize_parameters(module, std=0.05)``: every parameter random, in place; returns the module."""
    return _randomize_parameters


def _timm_vit(img: int = 64, **extra) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    model = timm.models.vision_transformer.VisionTransformer(img_size=img, patch_size=8, embed_dim=64, depth=2,
                                                             num_heads=4, num_classes=10, **extra)
    return _randomize_parameters(model, 0.05).eval()


@pytest.fixture(scope="session")
def timm_vit() -> Callable[..., torch.nn.Module]:
    """``timm_vit(img=64, **extra)``: a small timm ViT (patch 8, width 64, depth 2, 10 classes), every
    parameter random, eval mode."""
    return _timm_vit


def _save_state_dict(state: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    from safetensors.torch import save_file

    if fmt == "pth":  # DeiT releases nest the weights under `model`
        torch.save({"model": state, "epoch": 3}, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    path.mkdir()  # an HF-hub-style folder as timm writes it
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text('{"architecture": "vit_tiny_patch16_224", "num_classes": 10}')
    return path


@pytest.fixture(scope="session")
def save_state_dict() -> Callable[[dict[str, torch.Tensor], Path, str], Path]:
    """``save_state_dict(state, path, fmt)``: writes a timm-style checkpoint — ``pth`` (DeiT's nesting under
    ``model``), ``safetensors``, or ``folder`` (HF-hub style) — and returns the path to give ``init``."""
    return _save_state_dict


def _save_tiny_bert_mlm(folder: Path) -> transformers.BertForMaskedLM:
    """A BertForMaskedLM shaped like recipes/albef/tiny.yaml's text stack, saved as an HF folder."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=256, max_position_embeddings=64, attn_implementation="eager")
    model = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
        model.cls.predictions.transform.LayerNorm.bias.normal_()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def save_tiny_bert_mlm() -> Callable[[Path], transformers.BertForMaskedLM]:
    """``save_tiny_bert_mlm(folder)``: a seeded BertForMaskedLM shaped like albef/tiny's text stack, saved
    as an HF folder; returns the model."""
    return _save_tiny_bert_mlm
