"""Binding oracle: can a recipe's text and fusion layers bind at all, given an image encoder that
already sees objects?

``--image oracle`` replaces the image tower by *object tokens* built from the synthetic scene files
(``scenes_*.json``): per object, embedding(colour) + embedding(shape) + embedding(x bucket) +
embedding(y bucket) on an 8×8 grid, after a learned [CLS]; ``[B, 1+4, D]``, empty slots a learned
token (``--xy linear``: a linear map of the two centred bucket coordinates replaces the position
embeddings, so "further left" is a direction from the first step). ``--image grid`` gives the fusion
layers the patch layout instead: one token per 8×8 cell, embedding(colour) + embedding(shape) of the
object covering the cell centre (a background class elsewhere) + a learned position (``--grid-pos
sincos``: fixed 2-D sin-cos positions); ``[B, 1+64, D]``; ``--grid-layers N`` runs N self-attention
blocks with a learned BEiT-style 2-D relative-position bias over the cells first, so a cell can gather
what lies above / left of it. ``--image pixels`` keeps the recipe's image tower
(``--image-tower`` loads a state dict, ``--freeze-tower`` stops its training, ``--stem-extra N`` adds
N stride-1 3×3 convolutions at the patch grid to the conv stem: receptive field 15 → 47 px with 2).
``--text-mixing conv`` sets ``encoder.text.local_mixing=3`` (a depthwise 3-tap convolution over
neighbouring token embeddings before the embedding LayerNorm, :class:`vlkit.nn.bert.LocalMixing`), so
a token starts out knowing its neighbours (BERT's absolute positions leave that to be learned).
``--swap-negatives`` makes every ITM text negative that can be one the positive caption with two
attributes or its related phrases swapped (NegCLIP-style, built with the generator's own ``swap``).

Training: MLM in which colour, shape and relation words are masked with probability ``--bind-mask``
(others 15%), plus ``--itm-weight`` × ITM on twins: B (image, caption) positives and B (image, its
compositional twin's same-numbered caption) negatives — the ``swap_acc`` target itself;
``--ground-weight`` adds the ``grounding`` objective on the positives' annotated phrases
(``--relations-only``: only images of position twins and their two focus captions, so the negative is
the same words with the relation reversed, e.g. "the blue square is above / below the yellow circle";
the ITM loss is printed as ``itm_loss``). Every
``--eval-every`` steps, on the test split's swap probes: ``mlm_swap`` (every token where caption and
swapped caption differ is masked; the true tokens' summed log-probability must beat the swapped ones';
chance 0.5), ``itm_swap`` (the ITM head's match logit of the true caption above the swapped one, the
``swap_acc_itm`` that ``vlkit train`` reports), per probe kind.

    python research/binding_oracle.py recipes/albef/tiny.yaml --image oracle --text-mixing conv
    python research/binding_oracle.py recipes/albef/tiny.yaml --image oracle --text-mixing conv --itm-weight 1

Measured (2 CPU cores, torch 2.15.0, albef/tiny, seed 0; swap accuracies attribute / relation at the
last step; the first five rows ran on 2026-11-23, the others on 2026-11-24). Rows marked * used the
benchmark's earlier neighbour-mixing wrapper (the same convolution and initialization as
``local_mixing``, without zeroing the padding); the unmarked ones ``encoder.text.local_mixing``:

| image | text mixing | ITM weight | steps | wall | mlm_swap | itm_swap |
|---|---|---|---|---|---|---|
| oracle * | conv | 0 | 1500 | 41 s | 0.86 / 0.58 | (untrained head) |
| oracle * | none | 0 | 1500 | 45 s | 0.61 / 0.49 | (untrained head) |
| pixels * | conv | 0 | 1500 | 129 s | 0.57 / 0.55 | (untrained head) |
| oracle * | conv | 1 | 2000 | 163 s | 0.87 / 0.56 | **0.85** / 0.59 (0.86 at step 1000) |
| pixels, ``--image-tower`` shape tower * | conv | 1 | 1500 | 342 s | 0.56 / 0.47 | 0.51 / 0.50 |
| grid * | conv | 1 | 1500 | 138 s | 0.87 / 0.48 | **0.86** / 0.55 |
| grid (kernel zero-initialized) | conv | 1 | 1500 | 138 s | 0.64 / 0.50 | 0.64 / 0.51 |
| grid * | conv | 1 | 4000 (of a 5000-step schedule) | 348 s | 0.88 / 0.50 | 0.89 / 0.50 |
| grid, ``--swap-negatives`` * | conv | 1 | 1500 | 137 s | 0.86 / 0.47 | 0.56 / 0.50 |
| pixels, ``encoder.image.patch_size=16`` * | conv | 1 | 1500 | 251 s | 0.49 / 0.54 | 0.49 / 0.46 |
| pixels, ``--stem-extra 2`` * | conv | 1 | 1500 | 341 s | 0.53 / 0.54 | 0.50 / 0.49 |
| pixels, ``--image-tower`` dense tower, ``--freeze-tower`` | conv | 1 | 1500 | 212 s | 0.89 / 0.51 | **0.86** / 0.46 |

The dense tower: ``python research/shape_supervision.py recipes/albef/tiny.yaml --dense --steps 800
--train-images 8000 --save runs/dense_tower.pt`` (every patch supervised with the colour and shape of
the object covering it; 0.95 / 0.95 on held-out object patches, 38 s).

So the tiny ALBEF text and fusion layers *can* learn attribute binding — even ITM on twins, the
``swap_acc`` target — once the image tokens say which coloured shape lies where, from pixels too
(the dense tower) and not only from scene files, and once a token starts out knowing its neighbours
(``local_mixing``; zero-initialized it learns far more slowly). An image tower trained from scratch
with the text objectives never gets there: neither fewer tokens (patch 16) nor a 47-px receptive field
helps, nor a tower taught only which shapes an image holds. Relations (which object is left of /
above which) stay at chance in every row — with the cells' positions in the tokens, after 4,000
steps, and with swapped-phrase negatives on every caption (which, hard from the first step, also stop
ITM from learning attributes) — so they need a mechanism this stack lacks.

Relations alone (2026-11-24, same machine; ``--relations-only --itm-weight 3 --lr 1e-3 --steps 2000``
unless noted; ``itm_loss`` of the last step's batch; ln 2 = 0.693 is a constant output):

| image | options | steps | wall | itm_loss | itm_swap |
|---|---|---|---|---|---|
| oracle | ``--xy linear`` | 2000 | 149 s | 0.693 (0.694 at step 500) | 0.55 / 0.50 |
| oracle | bucket embeddings | 2000 | 148 s | 0.693 | 0.52 / 0.49 |
| oracle | ``--xy linear``, ``encoder.text.layers=6`` (four fusion layers) | 2000 | 202 s | 0.693 | 0.48 / 0.48 |
| oracle | ``--xy linear`` | 8000 | 546 s | 0.693 (at every 1,000th step) | 0.50 / 0.51 |

With every word and every image a positive exactly as often as a negative, the ITM head never leaves
its constant output — not even to memorize the training pairs — with ordinal coordinates and with
twice the fusion depth. The decision is a three-way interaction (relation word × which phrase is the
subject × the two objects' positions) with no lower-order term for gradient descent to start from;
attribute binding, by contrast, rides on the query-key match that cross-attention computes anyway.
Adding the twin objective's other captions back (``--itm-weight 1``, all captions, 1500 steps,
``--text-mixing conv`` unless the row sets ``local_mixing``) with mechanisms meant to give relations a
foothold leaves them at chance too:

| image | options | wall | itm_swap |
|---|---|---|---|
| grid | ``--grid-pos sincos`` | 148 s | 0.84 / 0.51 |
| grid | ``--grid-pos sincos --grid-layers 2`` | 273 s | 0.87 / 0.52 |
| grid | ``--grid-pos sincos``, ``encoder.text.layers=6`` | 219 s | 0.87 / 0.51 |
| grid | ``encoder.text.local_mixing=5`` | 153 s | 0.81 / 0.47 |
| grid | ``encoder.text.local_mixing=7`` (a noun's window reaches the relation word) | 152 s | 0.62 / 0.51 |

(Overrides go right after the recipe: ``binding_oracle.py recipes/albef/tiny.yaml encoder.text.layers=6
--image grid ...``.)

With phrase boxes (2026-11-24): ``--ground-weight 1`` adds vlkit's ``grounding`` objective (box
regression of each annotated phrase of the ITM positives from its pooled fused tokens, L1 + GIoU) to
``--image oracle --xy linear --text-mixing conv --relations-only --itm-weight 3 --lr 1e-3 --steps 1500``:

| step | wall | itm_loss | box_iou | mlm_swap | itm_swap |
|---|---|---|---|---|---|
| 500 | 40 s | 0.350 | 0.61 | 0.86 / 0.54 | 0.79 / 0.79 |
| 1000 | 76 s | 0.001 | 0.64 | 0.90 / 0.61 | 0.90 / **1.00** |
| 1500 | 115 s | 0.000 | 0.62 | 0.91 / 0.64 | 0.90 / **1.00** |

Told where each phrase's object is, the fusion layers learn the relation comparison at once: the
missing lower-order term was localization, not the comparison. From pixels too — the recipe's own
image tower, trained from scratch (``--image pixels --text-mixing conv --relations-only --itm-weight 3
--lr 1e-3 --steps 1500 --ground-weight 1``; stopped after the step-750 evaluation):

| step | wall | itm_loss | box_iou | mlm_swap | itm_swap |
|---|---|---|---|---|---|
| 250 | 95 s | 0.692 | 0.15 | 0.50 / 0.52 | 0.46 / 0.46 |
| 500 | 192 s | 0.316 | 0.41 | 0.63 / 0.53 | 0.89 / **0.90** |
| 750 | 282 s | 0.136 | 0.61 | 0.87 / 0.69 | 0.92 / **0.93** |
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import Mlp, build_sincos2d_pos_embed
from torch import Tensor, nn

from vlkit.build import build_encoder
from vlkit.core.batch import PHRASE_REGIONS as REGIONS
from vlkit.data.phrases import PhraseBox, phrase_regions
from vlkit.data.synthetic.captions import captions_for, swap
from vlkit.data.synthetic.lexicon import COLORS, SHAPES
from vlkit.data.synthetic.semantics import is_true
from vlkit.data.synthetic.writer import read_scenes
from vlkit.data.tokenizer import load_tokenizer, tokenize
from vlkit.data.transforms import NORMALIZATION
from vlkit.encoders.base import Encoder, ImageEncoding
from vlkit.heads.box import BoxHead
from vlkit.heads.itm import ITMHead
from vlkit.heads.mlm import MLMHead
from vlkit.nn.relative_position import image_relative_position_index
from vlkit.nn.self_attention import SelfAttention
from vlkit.nn.stem import ChannelLayerNorm
from vlkit.objectives.grounding import Grounding, GroundingConfig
from vlkit.recipe import load_recipe
from vlkit.registry import get as registry_get

BIND_WORDS = (*COLORS, *SHAPES, "left", "right", "above", "below", "over", "under")
MAX_OBJECTS, GRID = 4, 8


class ObjectTokens(nn.Module):
    """Scene objects ``[B, 4, 4]`` (colour, shape, x bucket, y bucket) and presence ``[B, 4]`` →
    image tokens ``[B, 1+4, D]``."""

    def __init__(self, dim: int, xy: str = "embedding") -> None:
        super().__init__()
        self.colour, self.shape = nn.Embedding(len(COLORS), dim), nn.Embedding(len(SHAPES), dim)
        self.linear_xy = xy == "linear"
        if self.linear_xy:  # ordinal from the start: a linear map of the centred bucket coordinates
            self.xy = nn.Linear(2, dim)
        else:
            self.x, self.y = nn.Embedding(GRID, dim), nn.Embedding(GRID, dim)
        self.cls, self.empty = nn.Parameter(0.02 * torch.randn(dim)), nn.Parameter(0.02 * torch.randn(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, objects: Tensor, present: Tensor) -> Tensor:
        if self.linear_xy:
            where = self.xy(objects[..., 2:4].float() / GRID - 0.5)
        else:
            where = self.x(objects[..., 2]) + self.y(objects[..., 3])
        x = self.colour(objects[..., 0]) + self.shape(objects[..., 1]) + where
        x = torch.where(present[..., None], x, self.empty)
        return self.norm(torch.cat((self.cls.expand(len(x), 1, -1), x), 1))


def scene_objects(scenes: list[dict[str, Any]], size: int) -> tuple[Tensor, Tensor]:
    """``[N, 4, 4]`` object attributes (colour, shape, x, y bucket) and ``[N, 4]`` presence."""
    colours, objects = list(COLORS), torch.zeros(len(scenes), MAX_OBJECTS, 4, dtype=torch.long)
    present = torch.zeros(len(scenes), MAX_OBJECTS, dtype=torch.bool)
    for n, scene in enumerate(scenes):
        for k, o in enumerate(scene["objects"][:MAX_OBJECTS]):
            objects[n, k] = torch.tensor([colours.index(o["color"]), SHAPES.index(o["shape"]),
                                          min(o["x"] * GRID // size, GRID - 1), min(o["y"] * GRID // size, GRID - 1)])
            present[n, k] = True
    return objects, present


class RelativeCellBlock(nn.Module):
    """Pre-LN transformer block over ``[B, 1+G*G, D]`` cell tokens whose self-attention carries a learned
    BEiT-style 2-D relative-position bias (one per head and patch offset), so that a head can attend
    "to the cells below me" from the first step."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = SelfAttention(dim, heads), Mlp(dim, 4 * dim)
        self.register_buffer("index", image_relative_position_index(GRID), persistent=False)
        self.table = nn.Parameter(torch.zeros(int(self.index.max()) + 1, heads))

    def forward(self, x: Tensor) -> Tensor:
        bias = self.table[self.index].permute(2, 0, 1)[None]  # [1, H, 1+G*G, 1+G*G]
        x = x + self.attn(self.norm1(x), bias=bias)
        return x + self.mlp(self.norm2(x))


class GridTokens(nn.Module):
    """Per-cell scene labels ``[B, G*G, 2]`` (colour, shape; -1 background) → ``[B, 1+G*G, D]``.

    ``pos``: ``learned`` positions, or fixed 2-D ``sincos`` ones (ordinal from the start);
    ``layers``: :class:`RelativeCellBlock` s run over the cells before the fusion layers see them."""

    def __init__(self, dim: int, pos: str = "learned", layers: int = 0) -> None:
        super().__init__()
        self.colour, self.shape = nn.Embedding(len(COLORS) + 1, dim), nn.Embedding(len(SHAPES) + 1, dim)
        if pos == "sincos":
            self.register_buffer("pos", build_sincos2d_pos_embed([GRID, GRID], dim), persistent=False)
        else:
            self.pos = nn.Parameter(0.07 * torch.randn(GRID * GRID, dim))
        self.cls = nn.Parameter(0.02 * torch.randn(dim))
        self.blocks = nn.ModuleList(RelativeCellBlock(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, cells: Tensor, _: Tensor) -> Tensor:
        x = self.colour(cells[..., 0] + 1) + self.shape(cells[..., 1] + 1) + self.pos
        x = torch.cat((self.cls.expand(len(x), 1, -1), x), 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def scene_grid(scenes: list[dict[str, Any]], size: int, grid: int = GRID) -> tuple[Tensor, Tensor]:
    """``[N, G*G, 2]`` colour and shape of the topmost object covering each cell centre (-1: background),
    and an unused ``[N, 1]`` (the signature of :func:`scene_objects`)."""
    colours, cells = list(COLORS), torch.full((len(scenes), grid, grid, 2), -1, dtype=torch.long)
    centre = (torch.arange(grid) + 0.5) * size / grid
    for n, scene in enumerate(scenes):
        for o in scene["objects"]:
            half = o["extent"] / 2
            ys = ((centre - o["y"]).abs() <= half).nonzero()[:, 0]
            xs = ((centre - o["x"]).abs() <= half).nonzero()[:, 0]
            for yy in ys:
                cells[n, yy, xs] = torch.tensor([colours.index(o["color"]), SHAPES.index(o["shape"])])
    return cells.flatten(1, 2), torch.zeros(len(scenes), 1)


def read_pixels(root: Path, paths: list[str]) -> Tensor:
    """``[N, 3, H, W]`` uint8."""
    return torch.stack([torch.from_numpy(np.array(Image.open(root / p).convert("RGB"))).permute(2, 0, 1)
                        for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--image", choices=("oracle", "grid", "pixels"), default="oracle")
    parser.add_argument("--image-tower", type=Path,
                        help="(pixels) image tower state dict (shape_supervision.py --save)")
    parser.add_argument("--stem-extra", type=int, default=0, help="(pixels) extra 3x3 convs at the patch grid")
    parser.add_argument("--freeze-tower", action="store_true", help="(pixels) do not train the image tower")
    parser.add_argument("--text-mixing", choices=("none", "conv"), default="none")
    parser.add_argument("--bind-mask", type=float, default=0.5, help="masking rate of colour/shape/relation words")
    parser.add_argument("--itm-weight", type=float, default=0.0, help="weight of ITM on twins (0: MLM only)")
    parser.add_argument("--swap-negatives", action="store_true",
                        help="ITM text negatives: the positive caption with its attributes or related phrases swapped")
    parser.add_argument("--xy", choices=("embedding", "linear"), default="embedding",
                        help="(oracle) object positions as bucket embeddings or a linear map of the coordinates")
    parser.add_argument("--grid-pos", choices=("learned", "sincos"), default="learned", help="(grid) cell positions")
    parser.add_argument("--grid-layers", type=int, default=0,
                        help="(grid) self-attention blocks with 2-D relative-position bias over the cells")
    parser.add_argument("--relations-only", action="store_true",
                        help="train on position twins' focus captions only (ITM negative: the twin's caption, "
                             "the same words with the relation reversed)")
    parser.add_argument("--ground-weight", type=float, default=0.0,
                        help="weight of vlkit's `grounding` objective on the ITM positives' annotated phrases")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    mixing = ["encoder.text.local_mixing=3"] if args.text_mixing == "conv" else []
    recipe = load_recipe(args.recipe, [*args.overrides, *mixing])
    source = registry_get("dataset", recipe.data.source.type).target(recipe.data.source)
    source.prepare()
    if not hasattr(source, "folder"):
        raise SystemExit("the binding oracle needs a recipe whose data source is `synthetic`")
    root = Path(source.folder)
    encoder: Encoder = build_encoder(recipe.encoder)
    mlm, itm = MLMHead.build(encoder), ITMHead(encoder.width)
    tokenizer = load_tokenizer(root / "tokenizer")
    train = json.loads((root / "train.json").read_text())
    probes = json.loads((root / "test_swaps.json").read_text())
    kinds = np.array([p["kind"] for p in probes])
    captions = [r["caption"] for r in train]
    groups: dict[int, list[int]] = {}
    for k, record in enumerate(train):
        groups.setdefault(record["group"], []).append(k)
    swapped_of: dict[tuple[int, str], list[str]] = {}
    if args.swap_negatives:
        per_image = {r["image_id"]: len(r["caption"]) for r in train}
        for scene in read_scenes(root, "train"):
            for c in captions_for(scene, per_image[scene.image_id]):
                outs = [t.text for t in (swap(c, "attribute"), swap(c, "relation")) if t is not None]
                outs = [t for t in outs if not is_true(t, scene)]
                if outs:
                    swapped_of.setdefault((scene.image_id, c.text), []).extend(outs)
        print(f"{len(swapped_of)} training captions with swap negatives", flush=True)
    twin = {a: b for g in groups.values() if len(g) == 2 for a, b in (g, g[::-1])}
    position_rows = np.zeros(0, dtype=np.int64)
    if args.relations_only:
        moved = {s.image_id for s in read_scenes(root, "train") if s.twin_kind == "position"}
        position_rows = np.array([k for k in twin if {train[k]["image_id"], train[twin[k]]["image_id"]} & moved])
        if not len(position_rows):
            raise SystemExit("--relations-only: the training split has no position twins (data.source.twin_fraction)")
        print(f"relations only: {len(position_rows)} images of position twins, focus captions", flush=True)

    grounding = Grounding(GroundingConfig(), head=BoxHead(encoder.width))
    image_side = Image.open(root / train[0]["image"]).size
    if args.ground_weight > 0 and "phrases" not in train[0]:
        raise SystemExit("--ground-weight: the synthetic data has no `phrases` (regenerate it)")
    modules: list[nn.Module] = [encoder, mlm, itm] + ([grounding] if args.ground_weight > 0 else [])
    if args.image in ("oracle", "grid"):
        size = recipe.encoder.input_size
        read = scene_objects if args.image == "oracle" else scene_grid
        test_scenes = {s["image_id"]: s for s in json.loads((root / "scenes_test.json").read_text())}
        train_inputs = read(json.loads((root / "scenes_train.json").read_text()), size)
        probe_inputs = read([test_scenes[p["image_id"]] for p in probes], size)
        width = encoder.image_geometry()[2]
        oracle = ObjectTokens(width, args.xy) if args.image == "oracle" else GridTokens(width, args.grid_pos,
                                                                                        args.grid_layers)
        modules.append(oracle)

        def encode_image(inputs: tuple[Tensor, ...], rows: Any) -> ImageEncoding:
            return ImageEncoding(embeds=oracle(inputs[0][rows], inputs[1][rows]))
    else:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION[recipe.data.normalize])
        train_inputs = (read_pixels(root, [r["image"] for r in train]),)
        probe_inputs = (read_pixels(root, [p["image"] for p in probes]),)
        if args.stem_extra:
            stem = encoder.visual_encoder.patch_embed
            if not hasattr(stem, "stem"):
                raise SystemExit("--stem-extra needs a recipe with encoder.image.stem: conv")
            width = stem.proj.in_channels
            extra: list[nn.Module] = []
            for _ in range(args.stem_extra):
                extra += [nn.Conv2d(width, width, 3, padding=1), ChannelLayerNorm(width), nn.GELU()]
            stem.stem = nn.Sequential(*stem.stem, *extra)
        if args.image_tower is not None:
            state = torch.load(args.image_tower, map_location="cpu", weights_only=True)
            encoder.visual_encoder.load_state_dict(state)
        if args.freeze_tower:
            encoder.visual_encoder.requires_grad_(False)

        def encode_image(inputs: tuple[Tensor, ...], rows: Any) -> ImageEncoding:
            return encoder.encode_image((inputs[0][rows].float() / 255 - mean) / std)

    bind_ids = torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in BIND_WORDS])
    unique = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}  # the MLM decoder is tied
    params = list(unique.values())
    optimizer = torch.optim.AdamW(params, args.lr, weight_decay=0.02)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    b, length = args.batch_size, recipe.data.max_text_len

    def text(captions_: list[str]) -> Any:
        """Text-layer encoding of ``captions_``."""
        tokens = tokenize(tokenizer, captions_, length)
        return encoder.encode_text(tokens.input_ids, tokens.attention_mask, unimodal=False)

    def evaluate() -> str:
        for m in modules:
            m.eval()
        with torch.no_grad():
            image = encode_image(probe_inputs, slice(None))
            true = tokenize(tokenizer, [p["caption"] for p in probes], length)
            swapped = tokenize(tokenizer, [p["swapped"] for p in probes], length)
            differs = true.input_ids != swapped.input_ids
            masked = encoder.encode_text(true.input_ids.masked_fill(differs, tokenizer.mask_token_id),
                                         true.attention_mask, unimodal=False)
            logp = mlm(encoder.fuse(image, masked).text).log_softmax(-1)
            mlm_win = ((logp.gather(-1, true.input_ids[..., None])[..., 0] * differs).sum(1)
                       > (logp.gather(-1, swapped.input_ids[..., None])[..., 0] * differs).sum(1)).numpy()
            score = [itm(encoder.fuse(image, text([p[key] for p in probes])).cls)[:, 1]
                     for key in ("caption", "swapped")]
            itm_win = (score[0] > score[1]).numpy()
        for m in modules:
            m.train()
        return "  ".join(f"{name} attr {win[kinds == 'attribute'].mean():.3f} rel {win[kinds == 'relation'].mean():.3f}"
                         for name, win in (("mlm_swap", mlm_win), ("itm_swap", itm_win)))

    print(f"{len(train)} images, {len(twin) // 2} twin pairs, {len(probes)} swap probes; chance 0.5", flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = rng.choice(position_rows, b) if args.relations_only else rng.integers(0, len(train), b)
        chosen = [captions[i][rng.integers(len(captions[i]))] for i in rows]
        tokens = tokenize(tokenizer, chosen, length)
        ids = tokens.input_ids
        real = tokens.attention_mask.bool() & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
        rate = torch.where(torch.isin(ids, bind_ids), args.bind_mask, 0.15)
        masked = (torch.rand(ids.shape) < rate) & real
        image = encode_image(train_inputs, rows)
        fused = encoder.fuse(image, encoder.encode_text(ids.masked_fill(masked, tokenizer.mask_token_id),
                                                        tokens.attention_mask, unimodal=False))
        loss = F.cross_entropy(mlm(fused.text[masked]), ids[masked])
        if args.itm_weight > 0:
            index = rng.integers(0, 2 if args.relations_only else 5, b)  # captions 0 and 1 relate the focus pair
            index = np.array([c % len(captions[i]) for i, c in zip(rows, index, strict=True)])
            positives = [captions[i][c] for i, c in zip(rows, index, strict=True)]
            negatives = [captions[twin[i]][c % len(captions[twin[i]])] if i in twin
                         else captions[rng.integers(len(train))][0] for i, c in zip(rows, index, strict=True)]
            for k, (i, text_) in enumerate(zip(rows, positives, strict=True)):
                options = swapped_of.get((train[i]["image_id"], text_))
                if options:
                    negatives[k] = options[rng.integers(len(options))]
            pairs = encode_image(train_inputs, np.concatenate((rows, rows)))
            fused_pairs = encoder.fuse(pairs, text(positives + negatives))
            logits = itm(fused_pairs.cls)
            itm_loss = F.cross_entropy(logits, torch.cat((torch.ones(b), torch.zeros(b))).long())
            loss = loss + args.itm_weight * itm_loss
            if args.ground_weight > 0:  # the positives' phrases, through vlkit's grounding objective
                phrases = [tuple(PhraseBox(p["span"][0], p["span"][1], tuple(p["box"])).normalized(*image_side)
                                 for p in train[i]["phrases"][c]) for i, c in zip(rows, index, strict=True)]
                spans = tokenize(tokenizer, positives, length).offsets or []
                regions = phrase_regions(phrases, spans, fused_pairs.text.shape[1])
                view = SimpleNamespace(batch=SimpleNamespace(extras={REGIONS: regions}),
                                       fused=SimpleNamespace(text=fused_pairs.text[:b]))
                ground = grounding(view)
                loss = loss + args.ground_weight * ground.loss
                ground_iou = ground.metrics["iou"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            elapsed = time.perf_counter() - start
            itm_part = f"itm_loss {itm_loss.item():.3f}  " if args.itm_weight > 0 else ""
            itm_part += f"box_iou {ground_iou.item():.2f}  " if args.ground_weight > 0 and args.itm_weight > 0 else ""
            print(f"step {step:5d}  {elapsed:5.0f}s  loss {loss.item():.3f}  {itm_part}{evaluate()}", flush=True)


if __name__ == "__main__":
    main()
