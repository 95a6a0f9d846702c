"""Optimizer and EMA fast paths on and off, at a recipe's real parameter set (default ALBEF-base, 210M).

    python benchmarks/fast_paths.py [RECIPE] [--reps N]

Times, per training step's worth of work (median of ``--reps``):
- the momentum teacher's EMA: ``torch._foreach_lerp_`` over all tensors (vlkit) vs a per-tensor loop
  (the official ``_momentum_update``);
- AdamW: ``fused=True`` vs ``foreach=True`` vs the per-tensor loop (``foreach=False``).
On a GPU the launch count dominates the loops (~430 tensors, 2–3 kernels each); on the CPU the
figures mostly show memory traffic. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlkit.build import build_encoder, build_pretrain_model
from vlkit.recipe import load_recipe
from vlkit.train.devices import resolve_device


def timed(fn, reps: int, device: torch.device) -> float:
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])  # the first call allocates optimizer state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", nargs="?", default="albef/base")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    device = resolve_device(recipe.train.device)
    torch.manual_seed(0)
    encoder = build_encoder(recipe.encoder)
    model = build_pretrain_model(encoder, recipe.objectives, recipe.momentum).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    teacher, online = model.teacher._pairs()
    rows = [("EMA, foreach lerp (vlkit)", timed(lambda: model.teacher.update(10**6), args.reps, device)),
            ("EMA, per-tensor loop (official)",
             timed(lambda: [t.mul_(0.995).add_(o, alpha=0.005) for t, o in zip(teacher, online, strict=True)],
                   args.reps, device))]
    for name, options in (("AdamW fused", {"fused": True}), ("AdamW foreach", {"foreach": True}),
                          ("AdamW per-tensor loop", {"foreach": False})):
        optimizer = torch.optim.AdamW(params, lr=1e-4, **options)
        rows.append((name, timed(optimizer.step, args.reps, device)))
        del optimizer
    count = sum(p.numel() for p in params)
    print(f"{args.recipe}: {len(params)} trainable tensors, {count / 1e6:.1f}M parameters, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| path | ms per step |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
