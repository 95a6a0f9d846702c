"""vlkit's ALBEF step does less work than the official code yet computes the same function, and
training steps never wait on the device.

A. Exact work reductions (fp32, dropout off, ``math`` attention). vlkit (1) projects each fusion layer's
   image keys/values once per step (``step.image_kv``) for the ITM positives, both kinds of negatives
   and MLM, (2) fuses positives and negatives in one call over 3B pairs, (3) runs the MLM vocabulary head
   on the masked positions only, (4) draws each kind of negative with one ``torch.multinomial``.
   :func:`reference_step` computes the step as ALBEF's ``models/model_pretrain.py`` does: separate fusion
   passes (positives, (text, negative image), (negative text, image), MLM), each projecting the image
   tokens again; the head on all B·L positions, labels -100 elsewhere; one multinomial per row in a
   Python loop. vlkit's ``draw`` is wrapped to re-seed the global RNG and the loop uses a generator with
   the same seed, so both sample the same negatives (asserted). Asserted: each loss and the total agree
   to rtol 1e-5; all parameter gradients together to ‖g − g_ref‖ / ‖g_ref‖ ≤ 1e-5; the matmul FLOPs
   (``FlopCounterMode``, forward + backward) drop by at least 3 K/V projections per fusion layer plus the
   head on the B·L − N unmasked positions; each fusion layer's key/value Linear runs 1 time, not 4;
   2 multinomial calls, not 2B; fewer aten ops.
B. No host syncs: real optimizer steps of the tiny recipes through the Trainer (batches fetched
   before; forward, backward, optimizer step, EMA and queue update counted) dispatch no
   ``_local_scalar_dense`` (``.item()``, ``int()``, ``bool()``), ``equal`` or ``allclose``, no op with a
   data-dependent output shape (``nonzero``, ``masked_select``, ``unique``, ``bincount``, indexing with a
   bool mask), and call no ``Tensor.tolist/numpy/cpu``. The optimizer is the Trainer's fused AdamW (the
   foreach build would call ``.item()`` on each parameter's step counter, a CPU tensor even in GPU runs).
"""
from __future__ import annotations

import collections
import itertools
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import vlkit.objectives.negatives as negatives
import vlkit.train.trainer as trainer_module
from vlkit.core.batch import Batch
from vlkit.models.model import PretrainModel
from vlkit.recipe import load_recipe
from vlkit.train.pretrain import Pretraining

torch.set_num_threads(1)

aten = torch.ops.aten
SEED = 1234  # both paths draw their negatives from this seed


class OpCounter(TorchDispatchMode):
    """Counts aten ops; records the stack of host syncs and of ops whose output shape depends on data."""

    SYNCS = {aten._local_scalar_dense, aten.equal, aten.is_nonzero, aten.allclose}
    DYNAMIC = {aten.nonzero, aten.masked_select, aten._unique, aten._unique2, aten.unique_dim,
               aten.unique_consecutive, aten.unique_dim_consecutive, aten.bincount}
    INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.flagged: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.ops[str(packet)] += 1
        indices = args[1] if packet in self.INDEXING and len(args) > 1 else ()
        bool_index = any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        dynamic_repeat = func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None
        if packet in self.SYNCS or packet in self.DYNAMIC or bool_index or dynamic_repeat:
            self.flagged.append((str(func), "".join(traceback.format_stack(limit=14)[:-1])))
        return func(*args, **kwargs)


class HostReads(TorchFunctionMode):
    """Records reads of tensor data into Python (device → host copies on a GPU); on the CPU they
    dispatch no aten op, so :class:`OpCounter` cannot see them."""

    READS = {Tensor.tolist, Tensor.numpy, Tensor.cpu}

    def __init__(self) -> None:
        super().__init__()
        self.flagged: list[tuple[str, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self.READS:
            self.flagged.append((f"Tensor.{func.__name__}", "".join(traceback.format_stack(limit=14)[:-1])))
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------- A. exact work reductions
def fuse_fresh(layers: Any, hidden: Tensor, mask: Tensor, image_embeds: Tensor) -> Tensor:
    """ALBEF's ``mode='fusion'``: every fusion layer projects ``image_embeds`` to keys/values again."""
    for i in layers.fusion_layers:
        layer = layers.layers[i]
        hidden = layer(hidden, mask, cross_kv=layer.cross_kv(image_embeds))
    return hidden


def per_row_multinomial(weights: Tensor) -> Tensor:
    """ALBEF: ``torch.multinomial(weights[b], 1)`` for each row in a Python loop."""
    g = torch.Generator().manual_seed(SEED)
    return torch.cat([torch.multinomial(weights[b], 1, generator=g) for b in range(weights.shape[0])])


def reference_step(model: PretrainModel, batch: Batch) -> dict[str, Tensor]:
    """One ALBEF pre-training forward (``models/model_pretrain.py``) with the vlkit model's modules."""
    B, L = batch.input_ids.shape
    enc, teacher, mlm_obj = model.encoder, model.teacher, model.objectives["mlm"]
    itc, itm_head, mlm = model.objectives["itc"], model.objectives["itm"].head, batch.mlm
    mask = batch.attention_mask.bool()

    def towers(e: Any, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        image_embeds = e.visual_encoder(batch.images)
        text_embeds = e.text_encoder.run(e.text_encoder.embed(ids), mask, e.text_encoder.text_layers)
        return (image_embeds, text_embeds, F.normalize(e.vision_proj(image_embeds[:, 0]), dim=-1),
                F.normalize(e.text_proj(text_embeds[:, 0]), dim=-1))

    image_embeds, text_embeds, image_feat, text_feat = towers(enc, batch.input_ids)
    temp, alpha = itc.temp(), 0.4
    targets = torch.eye(B)
    text_all, image_all = text_feat.T, image_feat.T  # without a teacher: in-batch, online features
    if teacher is not None:
        with torch.no_grad():
            image_embeds_m, _, image_feat_m, text_feat_m = towers(teacher.encoder, batch.input_ids)
            queue = itc.queue
            text_all = torch.cat([text_feat_m.T, queue.text_queue], 1)
            image_all = torch.cat([image_feat_m.T, queue.image_queue], 1)
            targets = F.pad(targets, (0, queue.size))
            t_i2t = alpha * F.softmax(image_feat_m @ text_all / temp, 1) + (1 - alpha) * targets
            t_t2i = alpha * F.softmax(text_feat_m @ image_all / temp, 1) + (1 - alpha) * targets
    else:
        t_i2t = t_t2i = targets
    sim_i2t, sim_t2i = image_feat @ text_all / temp, text_feat @ image_all / temp
    loss_itc = (-torch.sum(F.log_softmax(sim_i2t, 1) * t_i2t, 1).mean()
                - torch.sum(F.log_softmax(sim_t2i, 1) * t_t2i, 1).mean()) / 2

    with torch.no_grad():  # hard negatives: softmax over the batch columns, the positive zeroed
        weights_i2t = F.softmax(sim_i2t[:, :B], 1).fill_diagonal_(0)
        weights_t2i = F.softmax(sim_t2i[:, :B], 1).fill_diagonal_(0)
        text_neg, image_neg = per_row_multinomial(weights_i2t), per_row_multinomial(weights_t2i)
    stack = enc.text_encoder
    output_pos = fuse_fresh(stack, text_embeds, mask, image_embeds)
    output_neg_image = fuse_fresh(stack, text_embeds, mask, image_embeds[image_neg])
    output_neg_text = fuse_fresh(stack, text_embeds[text_neg], mask[text_neg], image_embeds)
    logits = itm_head(torch.cat([output_pos[:, 0], output_neg_image[:, 0], output_neg_text[:, 0]]))
    loss_itm = F.cross_entropy(logits, torch.cat([torch.ones(B), torch.zeros(2 * B)]).long())

    labels = torch.full((B * L,), -100).index_put_((mlm.positions,), mlm.labels)
    hidden = stack.run(stack.embed(mlm.input_ids), mask, stack.text_layers)
    scores = mlm_obj.head(fuse_fresh(stack, hidden, mask, image_embeds)).flatten(0, 1)  # all B·L positions
    loss_mlm = F.cross_entropy(scores, labels, ignore_index=-100)
    if teacher is not None:
        with torch.no_grad():
            t = teacher.encoder.text_encoder
            hidden_m = t.run(t.embed(mlm.input_ids), mask, t.text_layers)
            logits_m = teacher.modules_by_name["mlm.head"](fuse_fresh(t, hidden_m, mask, image_embeds_m))
        distill = -torch.sum(F.log_softmax(scores, -1) * F.softmax(logits_m.flatten(0, 1), -1), -1)
        loss_mlm = (1 - alpha) * loss_mlm + alpha * distill[labels != -100].mean()
    return {"loss/itc": loss_itc, "loss/itm": loss_itm, "loss/mlm": loss_mlm,
            "image_neg": image_neg, "text_neg": text_neg}


def measured(model: PretrainModel, run: Any) -> tuple[Any, list[Tensor | None], dict[str, Any]]:
    """``run()`` → its output, the gradients of its total loss and the work it took: matmul FLOPs
    (forward + backward), aten ops, multinomial calls, online key/value projections per fusion layer."""
    stack = model.encoder.text_encoder
    kv_calls: collections.Counter[int] = collections.Counter()
    hooks = [getattr(stack.layers[i].crossattention.self, name).register_forward_hook(
        lambda *_, i=i: kv_calls.update([i])) for i in stack.fusion_layers for name in ("key", "value")]
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    flops = FlopCounterMode(display=False)
    try:
        with flops, OpCounter() as ops:
            out = run()
            losses = {k: v for k, v in out.items() if k.startswith("loss/")}
            sum(losses.values()).backward()  # (FlopCounterMode's module hooks reject autograd.grad)
    finally:
        for hook in hooks:
            hook.remove()
    work = {"flops": flops.get_total_flops(), "ops": sum(ops.ops.values()), "multinomial": ops.ops["aten.multinomial"],
            "kv_per_layer": {i: n // 2 for i, n in kv_calls.items()}}
    return out, [p.grad for p in params], work


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "momentum_distillation"])
def test_albef_step_equals_the_reference_with_less_work(distill: bool, monkeypatch: pytest.MonkeyPatch,
                                                        tiny_albef_model, tiny_albef_batch,
                                                        tiny_albef_batch_shape: tuple[int, int]) -> None:
    model = tiny_albef_model(distill)
    batch = tiny_albef_batch(model)
    B, L = tiny_albef_batch_shape
    draws: list[Tensor] = []
    original_draw = negatives.draw

    def seeded_draw(weights: Tensor) -> tuple[Tensor, Tensor]:
        torch.manual_seed(SEED)
        index, valid = original_draw(weights)
        draws.append(index)
        return index, valid

    monkeypatch.setattr(negatives, "draw", seeded_draw)
    result, grads, work = measured(model, lambda: dict(model(batch).losses))
    ref, ref_grads, ref_work = measured(model, lambda: reference_step(model, batch))
    # the same negatives: vlkit draws texts (i2t weights), then images (t2i weights)
    assert torch.equal(draws[0], ref["text_neg"]) and torch.equal(draws[1], ref["image_neg"])
    for key in ("loss/itc", "loss/itm", "loss/mlm"):
        torch.testing.assert_close(result[key], ref[key], rtol=1e-5, atol=0, msg=key)
    total_ref = ref["loss/itc"] + ref["loss/itm"] + ref["loss/mlm"]
    torch.testing.assert_close(sum(result.values()), total_ref, rtol=1e-5, atol=0)
    assert [g is None for g in grads] == [g is None for g in ref_grads]
    flat = torch.cat([g.flatten() for g in grads if g is not None])
    ref_flat = torch.cat([g.flatten() for g in ref_grads if g is not None])
    rel = float((flat - ref_flat).norm() / ref_flat.norm())
    assert rel <= 1e-5, rel

    # the work that was removed
    enc, vit = model.encoder, model.encoder.visual_encoder.cfg
    n_fusion, d, dv, m = len(enc.text_encoder.fusion_layers), enc.width, vit.dim, vit.grid ** 2 + 1
    kv_projection = 2 * (2 * B * m * dv * d)  # keys and values of B images, one fusion layer, forward
    head_position = 2 * d * d + 2 * d * model.objectives["mlm"].head.vocab_size
    unmasked = B * L - batch.mlm.positions.numel()
    saved = 3 * (3 * n_fusion * kv_projection + unmasked * head_position)  # forward + backward (2× forward)
    if distill:
        saved += unmasked * head_position  # the teacher's head: forward only
    print(f"\n[distill={distill}] gradient rel. error {rel:.1e}; vlkit vs reference: FLOPs {work['flops']:,} vs "
          f"{ref_work['flops']:,} (saved {ref_work['flops'] - work['flops']:,}, expected ≥ {saved:,}); aten ops "
          f"{work['ops']} vs {ref_work['ops']}; K/V projections per fusion layer {work['kv_per_layer']} vs "
          f"{ref_work['kv_per_layer']}; multinomial calls {work['multinomial']} vs {ref_work['multinomial']}")
    assert ref_work["flops"] - work["flops"] >= saved
    assert work["kv_per_layer"] == dict.fromkeys(enc.text_encoder.fusion_layers, 1)
    assert ref_work["kv_per_layer"] == dict.fromkeys(enc.text_encoder.fusion_layers, 4)
    assert work["multinomial"] == 2 and ref_work["multinomial"] == 2 * B
    assert work["ops"] < ref_work["ops"]


# --------------------------------------------------------------------------- B. no host syncs
STEPS = 3
ALBEF_TEACHER = ["momentum.warmup_steps=0", "objectives.itm.negatives.ramp_steps=0"]  # teacher, queue, MoD on
RECIPES = {  # test id → (recipe, overrides)
    "albef/tiny": ("albef/tiny", ALBEF_TEACHER),
    "albef/tiny+pack_text": ("albef/tiny", [*ALBEF_TEACHER, "encoder.pack_text=true"]),
    "vlmo/tiny": ("vlmo/tiny", ["objectives.itm.negatives.ramp_steps=0"]),
    "dual/tiny": ("dual/tiny", []),
}
KNOWN_SYNCS: dict[str, str] = {}  # recipe → reason, for syncs found in vlkit and not yet fixed (xfail)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")  # generated once, shared by the recipes


@pytest.mark.parametrize("name", list(RECIPES))
def test_training_steps_do_not_sync(name: str, data_root: Path, tmp_path: Path) -> None:
    recipe, extra = RECIPES[name]
    overrides = ["data.source.train_images=48", "data.source.val_images=6", "data.source.test_images=8",
                 f"data.source.root={data_root}", "train.batch_size=8", "train.log_every=1000",
                 "train.ckpt_every=0", "train.cpu_threads=1", *extra]
    run = Pretraining(load_recipe(recipe, overrides), tmp_path / "run")
    trainer = run.trainer(progress=False)
    assert trainer.optimizer.defaults["fused"]
    batches = list(itertools.islice(run.batches(0), STEPS))  # the loader is not part of the step
    run.model.train()
    window = trainer_module._Window()
    flagged: list[tuple[str, str]] = []
    totals: list[int] = []
    for batch in batches:
        with HostReads() as reads, OpCounter() as ops:
            trainer._train_step(iter([batch]), window)  # forward, backward, optimizer step, EMA, queue
        trainer.step += 1
        totals.append(sum(ops.ops.values()))
        flagged += ops.flagged + reads.flagged
    print(f"\n[{name}] aten ops per step: {totals}")
    if name.endswith("+pack_text"):  # the loader's host-side lengths reached the packed text layers
        assert run.model.encoder.pack_text and batches[0].text_lengths is not None
    if recipe == "albef/tiny":  # the teacher's paths ran
        assert "metric/mlm/loss_distill" in window.sums
    if flagged and name in KNOWN_SYNCS:
        pytest.xfail(KNOWN_SYNCS[name])
    assert not flagged, "\n\n".join(f"{op} at\n{stack}" for op, stack in flagged)
