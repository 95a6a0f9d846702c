"""Binding probe: can a recipe's fusion encoder learn to tell an image's caption from its compositional
twin's caption, when that is the *only* thing it is trained on?

This isolates the hardest part of the synthetic world's ``swap_acc`` target from everything else in
pre-training (contrastive alignment, MLM, negative sampling). Each step trains the recipe's encoder
and ITM head on B pairs (image, one of its captions) → match and B pairs (image, the same-numbered
caption of its twin — the scene with two objects' colours, shapes or positions swapped) → no match.
A fraction ``--random-negatives`` of the negatives is instead a caption of a random other image
(a curriculum: such pairs only need grounding, not binding). Every ``--eval-every`` steps it prints
the training loss and accuracy and ``swap_acc`` on the test split's swap probes (the same probe as
``vlkit train`` reports as ``swap_acc_itm``).

    python research/binding_probe.py recipes/albef/tiny.yaml --steps 2000 --random-negatives 0.5
    python research/binding_probe.py recipes/albef/tiny.yaml --pool mean encoder.text.dim=128

Runs on the CPU: about 12 steps/s at tiny size with B=32 on 2 cores. Measured (2 CPU cores, torch
2.15.0, the first command above): training loss stays at ln 2 until step ~700, then reaches train
accuracy 0.61 at step 2000 (it tells apart only the random-caption negatives) while ``swap_acc``
stays at chance (0.48 at step 2000). With ``--random-negatives 0.3 --pool mean`` it stayed at chance
for 3,500 steps; with ``--lr 2e-4``, 0.517 at step 2000. Started from a tower that knows the shapes
(``--image-tower``, see ``shape_supervision.py``) it stays at chance too (0.49 at step 2000).
It cannot even memorize: with ``--random-negatives 0 --pairs 32``
(32 twin pairs, five captions each) the loss stays at ln 2 for 600 steps (train_acc 0.58 and 0.53),
both from scratch and with ``--init`` from the README's trained albef/tiny run; with ``--init`` on all
pairs and ``--random-negatives 0``, for 1,200 steps (lr 1e-3, ``--pool cls`` and ``mean``). With ``--init``,
``--lr 3e-4`` and ``--random-negatives 0.3`` it learns the random negatives (train_acc 0.67) and
``swap_acc`` stays 0.51 at step 1,200. ITM on twins sits on a saddle that neither start escapes
in this budget; ``binding_sides.py`` shows which tower lacks the binding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vlkit.build import build_encoder
from vlkit.data.tokenizer import load_tokenizer, tokenize
from vlkit.data.transforms import NORMALIZATION
from vlkit.encoders.base import Encoder
from vlkit.heads.itm import ITMHead
from vlkit.recipe import load_recipe
from vlkit.registry import get as registry_get
from vlkit.weights.init_from import find_checkpoint, read_checkpoint


def read_image(path: Path) -> Tensor:
    """``[3, H, W]`` uint8."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def load_run(encoder: Encoder, head: ITMHead, source: Path) -> None:
    """The online encoder and ITM head of a ``vlkit train`` run folder or checkpoint."""
    state = read_checkpoint(find_checkpoint(source))["model"]
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    head.load_state_dict({k.removeprefix("objectives.itm.head."): v for k, v in state.items()
                          if k.startswith("objectives.itm.head.")})
    print(f"encoder and ITM head from {source}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--random-negatives", type=float, default=0.5,
                        help="fraction of negatives that are a random other image's caption")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls",
                        help="ITM input: the fused [CLS] (ALBEF) or the mean of the fused text tokens")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="start encoder and ITM head from this run folder or checkpoint")
    parser.add_argument("--pairs", type=int, help="train on the first N twin pairs only (a memorization check)")
    parser.add_argument("--image-tower", type=Path,
                        help="start the image tower from this state dict (shape_supervision.py --save)")
    args = parser.parse_args()
    if args.init is not None and args.image_tower is not None:
        parser.error("--init already brings an image tower; give --init or --image-tower, not both")

    torch.manual_seed(args.seed)
    recipe = load_recipe(args.recipe, args.overrides)
    source = registry_get("dataset", recipe.data.source.type).target(recipe.data.source)
    source.prepare()
    if not hasattr(source, "folder"):
        raise SystemExit("the binding probe needs a recipe whose data source is `synthetic`")
    root = Path(source.folder)
    encoder: Encoder = build_encoder(recipe.encoder)
    if args.image_tower is not None:
        encoder.visual_encoder.load_state_dict(torch.load(args.image_tower, map_location="cpu", weights_only=True))
        print(f"image tower from {args.image_tower}", flush=True)
    head = ITMHead(encoder.width)
    if args.init is not None:
        load_run(encoder, head, args.init)
    tokenizer = load_tokenizer(root / "tokenizer")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION[recipe.data.normalize])

    groups: dict[int, list[dict]] = {}
    for record in json.loads((root / "train.json").read_text()):
        groups.setdefault(record["group"], []).append(record)
    twins = [g for g in groups.values() if len(g) == 2][: args.pairs]
    images = torch.stack([torch.stack([read_image(root / a["image"]), read_image(root / b["image"])])
                          for a, b in twins])  # [P, 2, 3, H, W]
    captions = [[a["caption"], b["caption"]] for a, b in twins]
    probes = json.loads((root / "test_swaps.json").read_text())
    probe_images = torch.stack([read_image(root / p["image"]) for p in probes])

    def itm_logits(pixels: Tensor, texts: list[str]) -> Tensor:
        """``[N, 3, H, W]`` uint8 and N captions → ``[N, 2]`` match logits."""
        image = encoder.encode_image((pixels.float() / 255 - mean) / std)
        tokens = tokenize(tokenizer, texts, recipe.data.max_text_len)
        text = encoder.encode_text(tokens.input_ids, tokens.attention_mask, unimodal=False)
        fused = encoder.fuse(image, text)
        if args.pool == "cls":
            return head(fused.cls)
        weights = text.mask.float()[..., None]
        return head((fused.text * weights).sum(1) / weights.sum(1))

    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, args.lr, weight_decay=0.02)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.03)
    rng = np.random.default_rng(args.seed)
    b, start = args.batch_size, time.perf_counter()
    labels = torch.cat((torch.ones(b), torch.zeros(b))).long()
    print(f"{len(twins)} twin pairs, {len(probes)} swap probes; chance 0.5", flush=True)
    for step in range(1, args.steps + 1):
        encoder.train()
        head.train()
        pair = rng.choice(len(twins), b, replace=len(twins) < b)
        side = rng.integers(0, 2, b)
        cap = rng.integers(0, len(captions[0][0]), b)
        other, other_side = rng.integers(0, len(twins), b), rng.integers(0, 2, b)
        use_random = rng.random(b) < args.random_negatives
        positives = [captions[p][s][c] for p, s, c in zip(pair, side, cap, strict=True)]
        negatives = [captions[o][os][c] if r else captions[p][1 - s][c]
                     for p, s, c, o, os, r in zip(pair, side, cap, other, other_side, use_random, strict=True)]
        pixels = images[pair, side]
        logits = itm_logits(torch.cat((pixels, pixels)), positives + negatives)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            encoder.eval()
            head.eval()
            with torch.no_grad():
                true = itm_logits(probe_images, [p["caption"] for p in probes])[:, 1]
                swapped = itm_logits(probe_images, [p["swapped"] for p in probes])[:, 1]
            accuracy = (logits.argmax(1) == labels).float().mean().item()
            print(f"step {step:5d}  {time.perf_counter() - start:6.0f}s  loss {loss.item():.3f}  "
                  f"train_acc {accuracy:.2f}  swap_acc {(true > swapped).float().mean().item():.3f}", flush=True)


if __name__ == "__main__":
    main()
