"""The recipe's ``train`` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlkit.schema import ConfigError


@dataclass(kw_only=True)
class TrainConfig:
    """Optimization and bookkeeping.

    Attributes:
        steps: optimizer steps in the run.
        batch_size: samples per optimizer step (split into ``grad_accum`` micro-batches).
        grad_accum: micro-batches per optimizer step (contrastive negatives span one micro-batch).
        lr: peak learning rate (AdamW).
        min_lr: floor of the cosine / linear decay.
        warmup_steps: linear warm-up from 0 to ``lr``, per step.
        schedule: ``cosine``, ``linear`` or ``constant`` after warm-up.
        weight_decay: AdamW decoupled weight decay; never applied to biases, norms, scalars,
            embeddings of positions / tokens types / [CLS], or relative-position tables.
        head_lr_mult: learning-rate multiplier of the objectives' heads (e.g. a new task classifier;
            VLMo fine-tunes its VQA head at 20× the encoder's rate).
        betas: AdamW betas (ALBEF: [0.9, 0.999]; VLMo: [0.9, 0.98]).
        eps: AdamW epsilon.
        clip_grad_norm: clip the global gradient norm; null: no clipping.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ...
        cpu_threads: intra-op threads of the training process on the CPU; null: the cores left after
            the data-loader workers (at least 1). More threads than free cores make OpenMP spin and
            can slow small models down by two orders of magnitude.
        log_every: steps between logged scalars (and host syncs for them).
        ckpt_every: steps between checkpoints (0: only at the end and on interruption).
        keep_last: checkpoints kept on disk.
        eval_every: steps between evaluations (0: only at the end).
    """

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.02
    head_lr_mult: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip_grad_norm: float | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    cpu_threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 0
    keep_last: int = 2
    eval_every: int = 0

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError("must be at least 1", key=key)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}",
                              key="grad_accum")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError("needs 0 ≤ min_lr ≤ lr and lr > 0", key="lr")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"must be two numbers in [0, 1), got {self.betas}", key="betas")
        if self.head_lr_mult <= 0:
            raise ConfigError(f"must be > 0, got {self.head_lr_mult}", key="head_lr_mult")
        if self.warmup_steps < 0 or self.ckpt_every < 0 or self.eval_every < 0:
            raise ConfigError("warmup_steps, ckpt_every and eval_every must be ≥ 0", key="warmup_steps")
