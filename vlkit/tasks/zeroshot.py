"""Zero-shot image classification (ALIGN / CLIP protocol) with a model's contrastive features; works
for dual, fusion and MoME encoders. Images come from

- ``image_folder``: one sub-folder per class (ImageNet layout; the folder names are the classes),
- ``annotations``: a JSON list ``[{"image": path, "label": int | str}]`` with ``classes`` naming them,
- neither: the recipe's data source (the synthetic world: the colour or shape of each image's largest
  object, on ``split``).

Metrics: ``top1``, ``top5`` (percent), ``mean_class_acc``, ``n_images``, ``n_classes``, ``chance_top1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vlkit.data.formats.classification import Classification, annotation_classification, folder_classification
from vlkit.data.json_dataset import AnnotationError, ImageFolderList
from vlkit.data.transforms import eval_transform
from vlkit.eval.zeroshot import class_embeddings, image_features, topk_accuracy
from vlkit.registry import register
from vlkit.schema import ComponentConfig, ConfigError
from vlkit.tasks.base import Task, TaskContext
from vlkit.tasks.templates import resolve_templates


@dataclass(kw_only=True)
class ZeroShotConfig(ComponentConfig):
    """Zero-shot classification.

    Attributes:
        image_folder: a folder with one sub-folder of images per class.
        annotations: or a JSON list of ``{"image", "label"}`` (label: class index or class name).
        image_root: folder the ``image`` paths of ``annotations`` are relative to.
        classes: class names used in the prompts (default: the sub-folder names with ``_`` as spaces, or
            the sorted label strings); with ``image_folder``, one per sub-folder in sorted order.
        templates: a shipped template set (:mod:`vlkit.tasks.templates`) or a list of templates with
            ``{}``; null: ``photo``, or ``synthetic_<attribute>`` on the synthetic data.
        split: the data source's split (when neither ``image_folder`` nor ``annotations`` is set).
        attribute: the class on the synthetic data: ``color`` or ``shape`` of the largest object.
    """

    image_folder: str | None = None
    annotations: str | None = None
    image_root: str = "."
    classes: list[str] | None = None
    templates: str | list[str] | None = None
    split: str = "test"
    attribute: Literal["color", "shape"] = "color"

    def __post_init__(self) -> None:
        if self.image_folder and self.annotations:
            raise ConfigError("give image_folder or annotations, not both", key="annotations")
        if self.templates is not None:
            try:
                resolve_templates(self.templates)
            except ValueError as err:
                raise ConfigError(str(err), key="templates") from None


@register("task", "zeroshot", config=ZeroShotConfig)
class ZeroShotTask(Task):
    """Zero-shot classification by prompt ensembles (see the module docstring)."""

    def __init__(self, cfg: ZeroShotConfig) -> None:
        self.cfg = cfg

    def classification(self, ctx: TaskContext) -> tuple[Classification, list[str]]:
        """The images, labels and classes, and the templates to use."""
        cfg = self.cfg
        if cfg.image_folder:
            data, default = folder_classification(Path(cfg.image_folder), cfg.classes), "photo"
        elif cfg.annotations:
            data = annotation_classification(Path(cfg.annotations), Path(cfg.image_root), cfg.classes)
            default = "photo"
        else:
            data = ctx.source.classification(cfg.split, cfg.attribute)
            default = f"synthetic_{cfg.attribute}"
        if not data.images:
            raise AnnotationError("the zero-shot split has no images")
        return data, resolve_templates(cfg.templates if cfg.templates is not None else default)

    @torch.no_grad()
    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        data, templates = self.classification(ctx)
        classes = class_embeddings(ctx.encoder, ctx.tokenize, data.classes, templates, batch_size=ctx.eval.batch_size,
                                   device=ctx.device)
        loader = torch.utils.data.DataLoader(
            ImageFolderList(data.images, eval_transform(ctx.image_size, ctx.data.normalize)),
            batch_size=ctx.eval.batch_size, num_workers=0)
        logits = image_features(ctx.encoder, loader, ctx.device, n_images=len(data.images)) @ classes.T
        metrics = topk_accuracy(logits, torch.tensor(data.labels))
        metrics.update(n_images=float(len(data.images)), n_classes=float(len(data.classes)),
                       chance_top1=100.0 / len(data.classes))
        return metrics
