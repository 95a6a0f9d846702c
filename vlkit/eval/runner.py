"""Evaluation of a pre-trained model on a source's split: retrieval recalls and the swap probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlkit import progress
from vlkit.core.encodings import ImageEncoding
from vlkit.data.config import DataConfig
from vlkit.data.json_dataset import Gallery, ImageFolderList, read_json, read_parts
from vlkit.data.sources import DataSource
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import tokenize
from vlkit.data.transforms import eval_transform
from vlkit.encoders.base import Encoder
from vlkit.eval.config import EvalConfig
from vlkit.eval.retrieval import encode_gallery, evaluate_retrieval
from vlkit.eval.swap import swap_accuracy


@dataclass
class PretrainEvaluator:
    """Retrieval (ITC, then ITM re-ranking) and the swap probe on ``cfg.split`` of ``source``.

    Attributes:
        encoder: the online encoder.
        itm_head: the ITM head (None: contrastive scores only).
        source: the dataset source.
        tokenizer: the recipe's tokenizer.
        data: the recipe's data section (text length, [SEP] rule, normalization).
        cfg: the recipe's eval section.
        image_size: the encoder's input side.
        device: where to run.
    """

    encoder: Encoder
    itm_head: nn.Module | None
    source: DataSource
    tokenizer: Any
    data: DataConfig
    cfg: EvalConfig
    image_size: int
    device: torch.device

    def _images(self, paths: list) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(ImageFolderList(paths, eval_transform(self.image_size, self.data.normalize)),
                                           batch_size=self.cfg.batch_size, num_workers=0)

    def _text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        clean = CaptionCleaner(self.data.pre_caption, self.data.max_words)
        tok = tokenize(self.tokenizer, [clean(t) for t in texts], self.data.max_text_len, drop_sep=self.data.drop_sep,
                       padding=self.data.padding)
        return tok.input_ids, tok.attention_mask

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        parts = self.source.split_parts(self.cfg.split)
        read = read_parts(parts, max_bad_fraction=self.data.max_bad_fraction)
        entries = read.entries
        gallery = Gallery.from_entries(entries)
        ids, mask = self._text(gallery.texts)
        store = torch.device("cpu") if self.cfg.gallery_on == "cpu" else self.device
        encoded = encode_gallery(self.encoder, self._images(gallery.images), ids, mask,
                                 batch_size=self.cfg.batch_size, device=self.device, store=store,
                                 n_images=len(gallery.images))
        metrics = evaluate_retrieval(self.encoder, encoded, gallery.img2txt, gallery.txt2img, itm_head=self.itm_head,
                                     k_test=self.cfg.k_test, pair_batch=self.cfg.batch_size * 4,
                                     query_chunk=self.cfg.query_chunk, device=self.device)
        metrics["chance_r1"] = 100.0 / len(gallery.images)
        metrics["n_skipped_annotations"] = float(read.skipped)  # malformed entries of the split, left out
        swap_file = self.source.swap_file(self.cfg.split)
        if self.cfg.swap_probe and swap_file is not None:
            metrics.update(self._swaps(read_json(swap_file)))
        return metrics

    def _swaps(self, items: list[dict[str, Any]]) -> dict[str, float]:
        paths = sorted({item["image"] for item in items})
        row = {p: i for i, p in enumerate(paths)}
        loader = self._images([self.source.image_root / p for p in paths])
        unique = ImageEncoding.cat([self.encoder.encode_image(batch.to(self.device)) for batch in progress.track(
            loader, "swap probe: encoding images", total=len(paths), unit="image", weight=len)])
        images = unique.select(torch.tensor([row[item["image"]] for item in items], device=self.device))
        return swap_accuracy(self.encoder, images, self._text([i["caption"] for i in items]),
                             self._text([i["swapped"] for i in items]), [i.get("kind", "swap") for i in items],
                             itm_head=self.itm_head, batch_size=self.cfg.batch_size)
