"""Collectives over the training processes, usable from any layer (objectives, evaluation, the trainer).

Every function works in a single process too (world size 1: gathers return their input), so
objectives call them unconditionally. Gathered tensors are concatenated in **rank order** (rank 0's
rows first), which with vlkit's sampler (each rank takes a contiguous block of the global batch) is
the order of the global batch a single process would have seen.

Two flavours of all-gather:

- :func:`all_gather_no_grad`: the other ranks' rows are constants (queues, negative mining, metrics).
- :func:`all_gather_with_grad`: differentiable; in backward every rank's gradient with respect to the
  gathered tensor is summed over ranks and each rank keeps the rows it contributed. With each rank's
  loss over its own rows and DDP's gradient averaging, the parameters' gradients equal those of one
  process computing the mean loss over the global batch.

Batches may be ragged (ranks holding different row counts, e.g. the last batch of an evaluation):
pass ``ragged=True`` and the sizes are exchanged first (one small collective and a host sync); the
default assumes equal shapes, as the training loader guarantees (``drop_last``).

Control-flow agreement (stop flags, counters) runs on a CPU (gloo) group so that it never syncs a
GPU stream; :func:`init_control_group` creates it when the default backend is NCCL.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_control_group: Any = None


def is_distributed() -> bool:
    """A process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of training processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that logs, writes checkpoints and shows the progress bar."""
    return rank() == 0


def init_control_group() -> None:
    """Create the CPU group used by :func:`all_reduce_cpu` (the default group when it is gloo)."""
    global _control_group
    if not is_distributed():
        _control_group = None
    elif dist.get_backend() == "gloo":
        _control_group = dist.group.WORLD
    else:
        _control_group = dist.new_group(backend="gloo")


def _control() -> Any:
    if _control_group is None:  # every rank reaches this at the same call, so creating it here is safe
        init_control_group()
    return _control_group


def all_reduce_cpu(values: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """All-reduce a small CPU tensor over the control group (in place; returned)."""
    if is_distributed():
        dist.all_reduce(values, op=op, group=_control())
    return values


def sizes(n: int) -> list[int]:
    """Every rank's ``n`` (e.g. its batch size), in rank order (one collective and a host sync)."""
    if not is_distributed():
        return [n]
    counts = all_reduce_cpu(torch.zeros(world_size(), dtype=torch.long).index_fill_(0, torch.tensor([rank()]), n))
    return [int(c) for c in counts]


def _gather_equal(x: Tensor) -> Tensor:
    """Rank-ordered concatenation along dim 0 of equal-shaped tensors."""
    out = x.new_empty((world_size() * x.shape[0], *x.shape[1:]))
    if dist.get_backend() == "gloo":
        dist.all_gather(list(out.chunk(world_size())), x.contiguous())
    else:
        dist.all_gather_into_tensor(out, x.contiguous())
    return out


def _gather_ragged(x: Tensor, counts: list[int]) -> Tensor:
    """Rank-ordered concatenation along dim 0 when ranks hold ``counts`` rows."""
    top = max(counts)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[:x.shape[0]] = x
    parts = _gather_equal(padded).split(top)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def offset(n: int, *, ragged: bool = False) -> int:
    """Row where this rank's ``n`` rows start in a gathered tensor."""
    if not is_distributed():
        return 0
    return sum(sizes(n)[:rank()]) if ragged else rank() * n


@torch.no_grad()
def all_gather_no_grad(x: Tensor, *, ragged: bool = False) -> Tensor:
    """``[n, ...]`` on each rank → ``[N, ...]`` (all ranks' rows in rank order), no gradient."""
    if not is_distributed():
        return x.detach()
    return _gather_ragged(x, sizes(x.shape[0])) if ragged else _gather_equal(x)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, counts: list[int] | None) -> Tensor:
        ctx.counts = counts
        ctx.rows = x.shape[0]
        return _gather_equal(x) if counts is None else _gather_ragged(x, counts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        counts, me = ctx.counts, rank()
        if counts is None and dist.get_backend() != "gloo":  # NCCL: sum and scatter in one collective
            out = grad.new_empty((ctx.rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out, None
        dist.all_reduce(grad)
        start = me * ctx.rows if counts is None else sum(counts[:me])
        return grad[start:start + ctx.rows], None


def all_gather_with_grad(x: Tensor, *, ragged: bool = False) -> Tensor:
    """``[n, ...]`` on each rank → ``[N, ...]`` in rank order; gradients flow back to the rank that
    contributed each row, summed over the ranks whose losses used it."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x, sizes(x.shape[0]) if ragged else None)


def gather_keep_local(x: Tensor, *, ragged: bool = False) -> Tensor:
    """All ranks' rows in rank order; this rank's rows are ``x`` itself (with its gradient), the others
    constants (VLMo's gather: every rank computes the global loss, gradients stay local)."""
    if not is_distributed():
        return x
    counts = sizes(x.shape[0]) if ragged else [x.shape[0]] * world_size()
    everything = _gather_ragged(x.detach(), counts) if ragged else _gather_equal(x.detach())
    start = sum(counts[:rank()])
    return torch.cat((everything[:start], x, everything[start + x.shape[0]:]))


@torch.no_grad()
def all_gather_padded(x: Tensor, dim: int, pad_value: float | int = 0) -> Tensor:
    """Gather tensors whose size differs along ``dim`` ≥ 1 (and possibly dim 0): each is padded with
    ``pad_value`` to the longest along ``dim`` first (e.g. token ids of batches padded per batch)."""
    if not is_distributed():
        return x
    longest = max(sizes(x.shape[dim]))
    if x.shape[dim] < longest:
        pad = list(x.shape)
        pad[dim] = longest - x.shape[dim]
        x = torch.cat((x, x.new_full(pad, pad_value)), dim=dim)
    return all_gather_no_grad(x, ragged=True)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; trusted, in-process data only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (pickled; trusted, in-process data only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control())
    return out


def barrier() -> None:
    """Wait for every rank (on the control group)."""
    if is_distributed():
        dist.barrier(group=_control())
