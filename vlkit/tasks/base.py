"""What a downstream task receives: the trained model's parts and the recipe's data settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlkit.core.outputs import MATCH_HEAD
from vlkit.data.config import DataConfig
from vlkit.data.sources import DataSource
from vlkit.data.text import CaptionCleaner
from vlkit.data.tokenizer import tokenize
from vlkit.encoders.base import Encoder
from vlkit.eval.config import EvalConfig
from vlkit.objectives.base import Objective


@dataclass
class TaskContext:
    """Everything a task's evaluation needs.

    Attributes:
        encoder: the online encoder (in eval mode).
        heads: each objective's heads by role (:meth:`vlkit.objectives.base.Objective.heads`), by objective
            name, for tasks that use them (:meth:`head`, :attr:`match_head`).
        source: the recipe's data source.
        tokenizer: the recipe's tokenizer.
        data: the recipe's data section (text length, [SEP] rule, normalization, caption cleaning).
        eval: the recipe's eval section (batch size).
        image_size: the encoder's input side.
        device: where to run.
        out_dir: where a task may write files besides its metrics (e.g. Grad-CAM overlays); None: nowhere.
        objectives: the model's objectives by name, for tasks whose prediction is more than a head
            (NLVR2's bi-fusion layers).
    """

    encoder: Encoder
    heads: dict[str, dict[str, nn.Module]]
    source: DataSource
    tokenizer: Any
    data: DataConfig
    eval: EvalConfig
    image_size: int
    device: torch.device
    out_dir: Path | None = None
    objectives: dict[str, Objective] = field(default_factory=dict)

    def head(self, objective: str, role: str) -> nn.Module | None:
        """Objective ``objective``'s head with ``role`` (None when there is none)."""
        return self.heads.get(objective, {}).get(role)

    @property
    def match_head(self) -> nn.Module | None:
        """The first objective's match head (:data:`~vlkit.core.outputs.MATCH_HEAD`), or None."""
        return next((heads[MATCH_HEAD] for heads in self.heads.values() if MATCH_HEAD in heads), None)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Texts prepared as in training → ``input_ids``, ``attention_mask`` ``[N, L]`` (on the CPU)."""
        clean = CaptionCleaner(self.data.pre_caption, self.data.max_words)
        tok = tokenize(self.tokenizer, [clean(t) for t in texts], self.data.max_text_len, drop_sep=self.data.drop_sep,
                       padding=self.data.padding)
        return tok.input_ids, tok.attention_mask


class Task:
    """Base of downstream tasks: :meth:`evaluate` returns the task's metrics (ALBEF's / the papers'
    names). A task that trains its own heads (``trains_own_objectives``) also provides the objective
    configurations, the training dataset and its collate function; otherwise fine-tuning trains the
    recipe's objectives on the data source's pairs (retrieval)."""

    trains_own_objectives: bool = False

    def objective_configs(self, source: DataSource, data: DataConfig) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} trains the recipe's objectives")

    def train_dataset(self, source: DataSource, data: DataConfig, transform: Any, *, seed: int,
                      draft_size: int | None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} trains on the data source's pairs")

    def collate(self, tokenizer: Any, source: DataSource, data: DataConfig) -> Any:
        raise NotImplementedError(f"{type(self).__name__} trains on the data source's pairs")

    def evaluate(self, ctx: TaskContext) -> dict[str, float]:
        raise NotImplementedError
