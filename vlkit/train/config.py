"""The recipe's ``train`` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlkit.core.errors import ConfigError
from vlkit.core.ranges import check_count, check_number

MAX_THREADS = 4096
"""More intra-op threads than this is a typo."""


@dataclass(kw_only=True)
class TrainConfig:
    """Optimization and bookkeeping.

    Attributes:
        steps: optimizer steps in the run (the learning-rate schedule spans them).
        max_steps: stop (checkpoint, evaluation, ``metrics.json``) at this step, before ``steps``: a
            smoke test, or one slice of a long run; a later run with a larger value (or none)
            resumes it on the same schedule. Null: run to ``steps``.
        batch_size: samples per optimizer step over all processes (the global batch; each of ``W``
            ranks reads ``batch_size / (W · grad_accum)`` per micro-batch), so a recipe means the same
            optimization on one CPU or on many GPUs.
        grad_accum: micro-batches per optimizer step (contrastive negatives span one micro-batch).
        strategy: with several processes (``torchrun``): ``ddp`` replicates the model and averages
            gradients; ``fsdp`` shards parameters, gradients and optimizer state (PyTorch FSDP2,
            per transformer block) for models that do not fit one device. Ignored in one process.
        compile: ``torch.compile`` every transformer block (online and teacher; per block, as the step's
            Python control flow stays eager). Shapes must repeat: text batches are padded to multiples
            of 8 when ``data.padding`` is ``longest``. The first steps pay the compilation.
        compile_mode: ``torch.compile``'s mode (``reduce-overhead`` adds CUDA graphs on GPUs).
        find_unused_parameters: DDP's option for models whose steps leave some parameters unused
            (e.g. NLVR2 bi-fusion leaves the encoder's own fusion layers idle); slower, so off.
        lr: peak learning rate (AdamW).
        min_lr: floor of the cosine / linear decay.
        warmup_steps: linear warm-up from 0 to ``lr``, per step.
        schedule: ``cosine``, ``linear`` or ``constant`` after warm-up.
        weight_decay: AdamW decoupled weight decay, on the parameters ``weight_decay_exempt`` does not exempt.
        weight_decay_exempt: which parameters get no weight decay (:mod:`vlkit.train.optim`). ``albef``
            (ALBEF's optimizer factory, the ``albef/base`` recipe): 1-D tensors and ``.bias`` only, so
            ``pos_embed``, ``cls_token``, BERT's position / token-type embeddings and the temperature
            are decayed. ``vlmo`` (VLMo's ``set_schedule``, the ``vlmo/base`` recipe): names containing
            ``bias``, ``LayerNorm.{weight,bias}``, ``norm.{weight,bias}``, ``norm1.*`` or ``norm2.*``
            (so the relative-position bias table is exempt; the experts' ``norm2_*``, the layer scales,
            ``cls_token``, the embeddings and the logit scales are decayed). ``vlkit``: biases, every
            tensor of < 2 dims (norms, layer scales, temperatures), position / token-type / [CLS]
            embeddings and relative-position tables.
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
        save_weights: with every checkpoint, also write the model's weights to ``DIR/model.safetensors``
            (the resolved recipe in its metadata): the file to release, loadable without unpickling.
        eval_every: steps between evaluations (0: only at the end).
    """

    steps: int = 1000
    max_steps: int | None = None
    batch_size: int = 64
    grad_accum: int = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    find_unused_parameters: bool = False
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.02
    weight_decay_exempt: Literal["albef", "vlmo", "vlkit"] = "vlkit"
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
    save_weights: bool = True
    eval_every: int = 0

    def __post_init__(self) -> None:
        for key, count in (("steps", self.steps), ("batch_size", self.batch_size), ("grad_accum", self.grad_accum),
                           ("log_every", self.log_every), ("keep_last", self.keep_last)):
            check_count(key, count)
        for key, count in (("warmup_steps", self.warmup_steps), ("ckpt_every", self.ckpt_every),
                           ("eval_every", self.eval_every)):
            check_count(key, count, low=0)
        if self.max_steps is not None:
            check_count("max_steps", self.max_steps)
        if self.cpu_threads is not None:
            check_count("cpu_threads", self.cpu_threads, high=MAX_THREADS)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}",
                              key="grad_accum")
        check_number("lr", self.lr, 0, low_open=True)
        check_number("min_lr", self.min_lr, 0, self.lr)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("head_lr_mult", self.head_lr_mult, 0, low_open=True)
        check_number("eps", self.eps, 0, low_open=True)
        if self.clip_grad_norm is not None:
            check_number("clip_grad_norm", self.clip_grad_norm, 0, low_open=True)
        if len(self.betas) != 2:
            raise ConfigError(f"must be two numbers in [0, 1), got {self.betas}", key="betas")
        for index, beta in enumerate(self.betas):
            check_number(f"betas[{index}]", beta, 0, 1, high_open=True)

    @property
    def stop_step(self) -> int:
        """The step this run ends at: ``max_steps`` when set and earlier than ``steps``."""
        return self.steps if self.max_steps is None else min(self.steps, self.max_steps)

    def micro_batch(self, world_size: int) -> int:
        """Samples each rank reads per micro-batch; an error when the global batch does not split."""
        if self.batch_size % (world_size * self.grad_accum):
            raise ConfigError(f"batch_size {self.batch_size} does not split over {world_size} processes × grad_accum "
                              f"{self.grad_accum}; use a multiple of {world_size * self.grad_accum}", key="batch_size")
        return self.batch_size // (world_size * self.grad_accum)
