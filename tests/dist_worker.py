"""One process of a multi-process test (run by tests/test_distributed.py, never collected by pytest).

``python tests/dist_worker.py SCENARIO OUT_PREFIX [JSON_ARGS]`` with the ``torchrun`` environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``...) set by the test; ``WORLD_SIZE=1`` runs the
single-process reference. Each process writes ``OUT_PREFIX.rank{r}.pt``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from vlkit import dist  # noqa: E402
from vlkit.build import build_encoder, build_pretrain_model  # noqa: E402
from vlkit.core.batch import Batch  # noqa: E402
from vlkit.data.tokens import TextTokens  # noqa: E402
from vlkit.encoders.albef import AlbefConfig  # noqa: E402
from vlkit.models.momentum import MomentumConfig  # noqa: E402
from vlkit.objectives.distill import DistillConfig  # noqa: E402
from vlkit.objectives.itc import ITCConfig  # noqa: E402
from vlkit.objectives.itm import ITMConfig  # noqa: E402
from vlkit.objectives.negatives import GlobalHardNegativesConfig, masked_softmax  # noqa: E402
from vlkit.train.distributed import init_from_environment, shutdown, wrap_model  # noqa: E402

TOKENS = TextTokens(pad_id=0, cls_id=101, sep_id=102, mask_id=103, unk_id=100, vocab_size=512)
GLOBAL_IDX = [0, 1, 2, 3, 3, 4, 5, 0]  # ids 0 and 3 have captions on both ranks
GLOBAL_BATCH = len(GLOBAL_IDX)


def global_batch() -> Batch:
    """The same 8 samples in every process (texts of different lengths, padded to 7)."""
    g = torch.Generator().manual_seed(11)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    lengths = torch.tensor([7, 5, 6, 3, 7, 4, 6, 5])
    ids = torch.randint(104, 512, (GLOBAL_BATCH, 7), generator=g)
    mask = torch.arange(7)[None] < lengths[:, None]
    ids = torch.where(mask, ids, torch.zeros_like(ids))
    ids[:, 0] = TOKENS.cls_id
    return Batch(images, ids, mask.long(), torch.tensor(GLOBAL_IDX))


def local_rows(batch: Batch) -> Batch:
    """This rank's contiguous block of the global batch (all of it in one process)."""
    n = GLOBAL_BATCH // dist.world_size()
    rows = slice(dist.rank() * n, (dist.rank() + 1) * n)
    return Batch(batch.images[rows], batch.input_ids[rows], batch.attention_mask[rows], batch.idx[rows])


def model_for(objectives: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(7)
    encoder = build_encoder(AlbefConfig.from_dict({"size": "tiny", "attention": "math", "text": {"vocab_size": 512}}))
    model = build_pretrain_model(encoder, objectives,
                                 MomentumConfig(decay=0.9, dropout=False))
    return model.eval()  # no dropout: every process computes the same function


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def itc(args: dict[str, Any]) -> dict[str, Any]:
    """One step of ITC (through DDP on several processes): loss, gradients, queue after the step."""
    teacher = args.get("teacher", False)
    cfg = ITCConfig(type="itc", gather=args["gather"], idx_targets=args.get("idx_targets", True),
                    queue_size=12 if teacher else 0, distill=DistillConfig(alpha=0.4) if teacher else None)
    model = model_for({"itc": cfg})
    wrapped, _ = wrap_model(model, "ddp", torch.device("cpu"), find_unused_parameters=True)  # ITC leaves fusion idle
    result = wrapped(local_rows(global_batch()), 0)
    result.loss.backward()
    model.after_step(result)
    queue = model.objectives["itc"].queue
    return {"loss": result.loss.detach(), "grads": grads_of(model),
            "queue": None if queue is None else {k: v.clone() for k, v in queue.state_dict().items()}}


def global_hard(args: dict[str, Any]) -> dict[str, Any]:
    """One ITM step with global hard negatives; the draws, the ITM loss and rank-averaged gradients."""
    import vlkit.objectives.negatives as negatives

    drawn: list[torch.Tensor] = []
    original = negatives.draw

    def recording(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index, valid = original(weights)
        drawn.append(index.clone())
        return index, valid

    negatives.draw = recording
    itm = ITMConfig(type="itm", negatives=GlobalHardNegativesConfig(type="global_hard", gather=args["gather"],
                                                                    exclude=args["exclude"]))
    model = model_for({"itc": ITCConfig(type="itc"), "itm": itm})
    torch.manual_seed(100 + dist.rank())  # the draws are the only random numbers of the step
    result = model(local_rows(global_batch()), 0)
    loss = result.losses["loss/itm"]
    loss.backward()
    grads = grads_of(model)
    for grad in grads.values():  # what DDP would do
        dist.all_reduce_cpu(grad)
        grad /= dist.world_size()
    return {"loss": loss.detach(), "grads": grads, "text_draw": drawn[0], "image_draw": drawn[1]}


def global_hard_reference(args: dict[str, Any]) -> dict[str, Any]:
    """One process, the whole batch: each rank's draws with its seed from its rows of the global
    similarity, the same pairs fused, the ranks' ITM losses and the gradient of their mean."""
    import torch.nn.functional as F

    world = args["world"]
    model = model_for({"itc": ITCConfig(type="itc"), "itm": ITMConfig(type="itm")})
    batch = global_batch()
    encoder, head = model.encoder, model.objectives["itm"].head
    image, text = encoder.encode_image(batch.images), encoder.encode_text(batch.input_ids, batch.attention_mask)
    scale = model.objectives["itc"].temp.inverse()
    with torch.no_grad():
        i2t, t2i = scale * image.feat @ text.feat.T, scale * text.feat @ image.feat.T
    n = GLOBAL_BATCH // world
    losses, text_draws, image_draws = [], [], []
    for r in range(world):
        rows = torch.arange(r * n, (r + 1) * n)
        if args["exclude"] == "same_image":
            allowed = batch.idx[rows][:, None] != batch.idx[None, :]
        else:  # VLMo: only the sample's own column of the global batch
            allowed = rows[:, None] != torch.arange(GLOBAL_BATCH)[None, :]
        torch.manual_seed(100 + r)
        text_neg = torch.multinomial(masked_softmax(i2t[rows], allowed), 1).squeeze(1)
        image_neg = torch.multinomial(masked_softmax(t2i[rows], allowed), 1).squeeze(1)
        fused = encoder.fuse(image, text, image_index=torch.cat((rows, image_neg, rows)),
                             text_index=torch.cat((rows, rows, text_neg)))
        labels = torch.cat((torch.ones(n, dtype=torch.long), torch.zeros(2 * n, dtype=torch.long)))
        losses.append(F.cross_entropy(head(fused.cls).float(), labels))
        text_draws.append(text_neg)
        image_draws.append(image_neg)
    torch.stack(losses).mean().backward()
    return {"losses": torch.stack(losses).detach(), "grads": grads_of(model), "text_draws": text_draws,
            "image_draws": image_draws}


def collectives(args: dict[str, Any]) -> dict[str, Any]:
    """The gathers on ragged inputs: rank r holds r + 2 rows of width r + 3 (rows = 10·rank + i)."""
    r = dist.rank()
    rows = torch.arange(r + 2, dtype=torch.float64)[:, None] + 10 * r
    ragged = rows.repeat(1, 3)  # [r + 2, 3]
    wide = torch.ones(r + 2, r + 3, dtype=torch.long) * (r + 1)  # [r + 2, r + 3]
    x = ragged.clone().requires_grad_(True)
    gathered = dist.all_gather_with_grad(x, ragged=True)
    weights = torch.arange(gathered.shape[0], dtype=torch.float64)[:, None] + 1  # row j weighted by j + 1
    (weights * gathered).sum().backward()
    y = ragged.clone().requires_grad_(True)
    kept = dist.gather_keep_local(y, ragged=True)
    kept.sum().backward()
    return {"no_grad": dist.all_gather_no_grad(ragged, ragged=True), "with_grad": gathered.detach(),
            "grad": x.grad, "keep_local_grad": y.grad, "padded": dist.all_gather_padded(wide, dim=1, pad_value=-1),
            "sizes": dist.sizes(r + 2), "offset": dist.offset(r + 2, ragged=True)}


def retrieval(args: dict[str, Any]) -> dict[str, Any]:
    """Retrieval metrics (ITC, then ITM re-ranking) of a random 10-image / 20-caption gallery, query
    blocks of 3 dealt out over the ranks."""
    from vlkit.eval.retrieval import encode_gallery, evaluate_retrieval

    model = model_for({"itc": ITCConfig(type="itc"), "itm": ITMConfig(type="itm")})
    g = torch.Generator().manual_seed(5)
    images = torch.randn(10, 3, 32, 32, generator=g)
    ids = torch.randint(104, 512, (20, 6), generator=g)
    ids[:, 0] = TOKENS.cls_id
    mask = torch.ones(20, 6, dtype=torch.long)
    txt2img = [i // 2 for i in range(20)]
    img2txt = [[2 * i, 2 * i + 1] for i in range(10)]
    with torch.no_grad():
        gallery = encode_gallery(model.encoder, images.split(4), ids, mask, batch_size=8, device=torch.device("cpu"))
        metrics = evaluate_retrieval(model.encoder, gallery, img2txt, txt2img, itm_head=model.objectives["itm"].head,
                                     k_test=4, pair_batch=8, query_chunk=3)
    return {"metrics": metrics}


def train(args: dict[str, Any]) -> dict[str, Any]:
    """``run_pretraining`` exactly as ``vlkit train`` runs it under torchrun."""
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import run_pretraining

    recipe = load_recipe(args["recipe"], args["overrides"])
    metrics = run_pretraining(recipe, args["out"], resume=args.get("resume", False), progress=False)
    return {"metrics": metrics}


SCENARIOS = {"itc": itc, "global_hard": global_hard, "global_hard_reference": global_hard_reference,
             "retrieval": retrieval, "collectives": collectives, "train": train}


def main() -> None:
    scenario, prefix = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if scenario != "train":  # run_pretraining joins the group itself
        init_from_environment(torch.device("cpu"), timeout_minutes=2)
    rank = int(os.environ.get("RANK", "0"))
    result = SCENARIOS[scenario](args)
    torch.save(result, Path(f"{prefix}.rank{rank}.pt"))
    if scenario != "train":
        shutdown()


if __name__ == "__main__":
    main()
