"""Training on several processes: joining a ``torchrun`` job, wrapping the model (DDP or FSDP2) and
world-size-portable training state.

- :func:`launched_by_torchrun` / :func:`init_from_environment`: ``torchrun`` sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; vlkit then joins the process group (NCCL on CUDA,
  gloo on the CPU) and places each rank on GPU ``LOCAL_RANK``.
- :func:`wrap_model`: ``train.strategy: ddp`` wraps in ``DistributedDataParallel`` (buffers such as
  the feature queues are not broadcast: every rank updates them identically from gathered features);
  ``fsdp`` shards parameters, gradients and optimizer state with PyTorch FSDP2 (``fully_shard``) per
  transformer block, the momentum teacher's blocks alongside the online ones so that its EMA update
  works on matching local shards.
- :func:`full_state` / :func:`load_full_state`: model and optimizer state as full (unsharded)
  tensors keyed by parameter name, the same whatever the strategy and world size, so a checkpoint
  written on 8 GPUs resumes on 1 and the reverse.

The collectives objectives use (all-gather with and without gradient) live in :mod:`vlkit.dist` and
are re-exported here.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.distributed as torch_dist
from torch import nn

from vlkit.dist import (  # noqa: F401 - re-exported
    all_gather_no_grad,
    all_gather_object,
    all_gather_with_grad,
    gather_keep_local,
    init_control_group,
    is_distributed,
    is_main,
    rank,
    world_size,
)
from vlkit.models.model import PretrainModel
from vlkit.train.rng import restore_rng, rng_state

log = logging.getLogger("vlkit.train")

Strategy = Literal["ddp", "fsdp"]


def launched_by_torchrun() -> bool:
    """This process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device, timeout_minutes: float = 30.0) -> torch.device:
    """Join the ``torchrun`` process group (no-op when already joined or not launched by torchrun).

    Args:
        device: the device the recipe resolved to (``cuda`` or ``cpu``).
        timeout_minutes: how long a collective may wait for the other ranks before failing.

    Returns:
        This rank's device: ``cuda:LOCAL_RANK`` on GPUs, else ``device``.
    """
    if not launched_by_torchrun():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                      device_id=device if device.type == "cuda" else None)
        log.info("joined the process group: rank %d of %d (%s, %s)", rank(), world_size(), backend, device)
    init_control_group()
    return device


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group. ``wait``: first wait for every rank to be done (the normal end):
    without it, a rank that tears its group down (rank 0 hosts the rendezvous store) while another
    still finishes its last collective can abort that one at exit. After an error, when the other
    ranks may be stuck elsewhere, leave at once."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        if wait:
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing left to wait for
                torch_dist.barrier()
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def torchrun_scope() -> Iterator[None]:
    """Around a command's work under ``torchrun``: leave the process group when it ends (after a
    barrier on success, at once after an error); nothing in a single process."""
    try:
        yield
    except BaseException:
        if launched_by_torchrun():
            shutdown(wait=False)
        raise
    if launched_by_torchrun():
        shutdown()


def wrap_model(model: PretrainModel, strategy: Strategy, device: torch.device, *, bf16: bool = False,
               find_unused_parameters: bool = False) -> tuple[nn.Module, list[nn.Parameter]]:
    """The module the training step calls: ``model`` itself in one process, else DDP around it or
    ``model`` sharded in place with FSDP2; and the parameters whose gradients the caller must
    average over ranks itself (FSDP2 cannot shard 0-d parameters such as temperatures; they stay
    replicated, see :func:`average_gradients`).

    Args:
        model: the pre-training model (encoder, objectives, teacher), on ``device``.
        strategy: ``ddp`` or ``fsdp``.
        bf16: FSDP2 gathers parameters in bf16 and reduces gradients in fp32 (autocast does the rest).
        find_unused_parameters: DDP option for models with parameters a step may not use (e.g. the
            encoder's fusion layers when an NLVR2 bi-fusion head replaces them).
    """
    if not is_distributed():
        return model, []
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True,
            **_no_buffer_broadcast()), []
    return model, shard_fsdp(model, bf16=bf16)


def _no_buffer_broadcast() -> dict[str, Any]:
    """DDP must not copy rank 0's buffers at every forward: the feature queues (hundreds of MB at
    base size) are kept identical on every rank by enqueueing gathered features. (Which keyword depends
    on the torch version, hence values typed ``Any`` for DDP's keyword arguments.)"""
    import inspect

    names = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}


def shard_fsdp(model: PretrainModel, *, bf16: bool = False) -> list[nn.Parameter]:
    """FSDP2 ``fully_shard`` on every transformer block of the online encoder and of the teacher (but
    ALBEF's fusion layers, whose image keys/values are computed outside their forward), then on the
    whole model (embeddings, fusion layers, heads). Returns the 0-d parameters FSDP2
    leaves out (replicated; their gradients need :func:`average_gradients`)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    scalars = [p for p in model.parameters() if p.dim() == 0]
    options: dict[str, Any] = {"mp_policy": policy} if policy is not None else {}
    encoders = [model.encoder]
    teacher = model.teacher
    if teacher is not None:
        encoders.append(teacher.encoder)
    for encoder in encoders:
        for block in encoder.blocks():
            if block.own_sharding_unit:
                fully_shard(block, ignored_params=set(scalars), **options)
    fully_shard(model, ignored_params=set(scalars), **options)
    return [p for p in scalars if p.requires_grad]


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Full parameters on every rank for the duration (FSDP2; a no-op otherwise): evaluation calls
    encoder methods outside the model's forward, where FSDP2 would not gather them, and ranks may
    run different numbers of block forwards (retrieval re-ranking is split over them), so nothing
    may be gathered or resharded per forward."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield
        return
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        yield
        return
    root = sharded[0]
    root.set_reshard_after_forward(False)  # forwards during evaluation keep the gathered weights
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()
        root.set_reshard_after_forward(True)  # FSDP2's training default: blocks reshard, the root does not
        root.set_reshard_after_forward(False, recurse=False)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of replicated ``params`` over ranks (one all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not is_distributed():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat)
    flat /= world_size()
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def freeze_unused_parameters(model: nn.Module, loss_of_one_batch: Callable[[], torch.Tensor]) -> list[str]:
    """Find the trainable parameters no objective uses (e.g. the fusion layers of a contrastive-only
    recipe) with one forward and backward (``loss_of_one_batch``; random state and buffers restored,
    gradients cleared) and stop them requiring grad, as DDP needs: it would otherwise wait for their
    gradients forever. In one process their gradient is None and AdamW skips them, so training is the
    same. Every rank must call it; returns the names (the union over ranks)."""
    rng = rng_state()
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # e.g. BatchNorm statistics
    loss_of_one_batch().backward()
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    for p in params.values():
        p.grad = None
    restore_rng(rng)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    unused = sorted(set().union(*map(set, all_gather_object(names))))
    for name in unused:
        params[name].requires_grad_(False)
    if unused and is_main():
        log.info("%d parameter tensors receive no gradient from this recipe's objectives and are left out of "
                 "training (e.g. %s)", len(unused), ", ".join(unused[:3]))
    return unused


def set_gradient_sync(wrapped: nn.Module, enabled: bool) -> Any:
    """A context for one micro-batch: gradients are reduced over ranks only when ``enabled`` (the
    last micro-batch of an accumulation)."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else wrapped.no_sync()
    if is_distributed():  # FSDP2: a model is sharded only then (wrap_model)
        from torch.distributed.fsdp import FSDPModule

        if isinstance(wrapped, FSDPModule):
            wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def tied_keys(model: nn.Module) -> dict[str, str]:
    """State-dict keys that name the very same parameter or buffer as an earlier key (BERT's MLM decoder
    is the word-embedding matrix): ``{later key: first key}``. Read from the module itself, so it holds
    under FSDP2 too, where the gathered copies no longer share storage."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in first:
            tied[key] = first[id(value)]
        else:
            first[id(value)] = key
    return tied


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded) model and optimizer state on the CPU, keyed by parameter name; a collective
    under FSDP (every rank calls it), a local copy otherwise. Tied weights are one tensor under all their
    names, whatever the strategy (FSDP2 gathers each name separately: the copies are re-tied here), so
    checkpoints and ``model.safetensors`` store them once."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer,
                                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for alias, owner in tied_keys(model).items():
        copy, kept = model_state.get(alias), model_state.get(owner)
        if isinstance(copy, torch.Tensor) and isinstance(kept, torch.Tensor) and copy is not kept \
                and copy.shape == kept.shape:
            model_state[alias] = kept
    return model_state, optimizer_state


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optimizer_state: dict[str, Any]) -> None:
    """Load what :func:`full_state` returned into ``model`` / ``optimizer``, whatever the strategy
    and world size they run with now. The model must match exactly; parameters without optimizer
    state (never updated: no objective uses them) start with none, as they had."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, optimizer_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
