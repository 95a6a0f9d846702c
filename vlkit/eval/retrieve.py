"""``vlkit retrieve``: composed-query image retrieval with a checkpoint's contrastive features over a
gallery (the recipe's evaluation split, or a folder of images), written as a PNG contact sheet and a
JSON list of the results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlkit.data.image_files import list_images
from vlkit.data.json_dataset import ImageFolderList, load_image, read_parts
from vlkit.data.transforms import eval_transform
from vlkit.encoders.base import contrastive_feat
from vlkit.eval.checkpoint_eval import load_online_weights
from vlkit.eval.composed import compose, contact_sheet, rank
from vlkit.eval.zeroshot import image_features
from vlkit.recipe import Recipe
from vlkit.train.pretrain import Pretraining
from vlkit.weights.init_from import find_checkpoint, read_checkpoint


@dataclass
class Query:
    """What to look for: an image (a file, or the gallery's ``image_index``-th image), plus and minus texts."""

    image: Path | None = None
    image_index: int | None = None
    plus: list[str] = field(default_factory=list)
    minus: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = ["[image]"] if self.image or self.image_index is not None else []
        parts += [f'+ "{t}"' for t in self.plus] + [f'- "{t}"' for t in self.minus]
        return " ".join(parts).removeprefix("+ ")


def gallery_images(run: Pretraining, recipe: Recipe, folder: Path | None) -> list[Path]:
    """A folder's images, or the distinct images of the recipe's evaluation split."""
    if folder is not None:
        found = list_images([folder])
        if not found:
            raise FileNotFoundError(f"no images under {folder}")
        return found
    assert recipe.data is not None
    entries = read_parts(run.source.split_parts(recipe.eval.split), max_bad_fraction=recipe.data.max_bad_fraction)
    return list(dict.fromkeys(e.image for e in entries.entries))


@torch.no_grad()
def run_retrieval_query(recipe: Recipe, checkpoint: str | Path, query: Query, out: Path, *, top: int = 16,
                        gallery_folder: Path | None = None) -> list[dict[str, Any]]:
    """Rank the gallery for ``query``; writes ``out`` (PNG) and ``out`` with ``.json``; returns the results."""
    run = Pretraining(recipe, out.parent, train_data=False)
    found = find_checkpoint(checkpoint)
    load_online_weights(run.model, read_checkpoint(found)["model"], source=str(found))
    run.model.eval()
    ctx = run.task_context()
    paths = gallery_images(run, recipe, gallery_folder)
    transform = eval_transform(ctx.image_size, ctx.data.normalize)
    loader = torch.utils.data.DataLoader(ImageFolderList(paths, transform), batch_size=ctx.eval.batch_size)
    gallery = image_features(ctx.encoder, loader, ctx.device, n_images=len(paths), desc="encoding the gallery")
    image_path = query.image if query.image is not None else (
        paths[query.image_index] if query.image_index is not None else None)
    picture = load_image(image_path) if image_path is not None else None
    if image_path is not None and picture is None:
        raise FileNotFoundError(f"query image {image_path} is missing or corrupt")
    image_feat = image_features(ctx.encoder, [transform(picture)[None]], ctx.device, desc=None)[0] if picture else None

    def texts(items: list[str]) -> list[torch.Tensor]:
        if not items:
            return []
        ids, mask = ctx.tokenize(items)
        return list(contrastive_feat(ctx.encoder.encode_text(ids.to(ctx.device), mask.to(ctx.device))))

    indices, scores = rank(gallery, compose(image_feat, texts(query.plus), texts(query.minus)), top)
    results = [{"rank": r + 1, "image": str(paths[i]), "score": s} for r, (i, s) in enumerate(zip(indices, scores,
                                                                                              strict=True))]
    shown = [(load_image(paths[i]), f"#{r + 1}  {s:.3f}") for r, (i, s) in enumerate(zip(indices, scores, strict=True))]
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(picture, query.describe(), [(im, label) for im, label in shown if im is not None]).save(out)
    out.with_suffix(".json").write_text(json.dumps({"query": query.describe(), "query_image": str(image_path or ""),
                                                    "results": results}, indent=2) + "\n")
    return results
