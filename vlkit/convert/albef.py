"""Official ALBEF checkpoints (reference spec §7.1) ⇄ vlkit's ALBEF model.

Layouts:

- ``pretrain`` (``ALBEF.pth``, ``ALBEF_4M.pth``): ``text_encoder.bert.*`` and the MLM head
  ``text_encoder.cls.*`` (decoder tied to the word embeddings), queues, ``temp``, ``itm_head``.
- ``retrieval`` (``mscoco.pth``, ``flickr30k.pth``, ``refcoco.pth``; also SNLI-VE's): ``bert.``
  stripped, no MLM head, ``idx_queue``; VE adds ``cls_head``.
- ``vqa`` (``vqa.pth``): a 12-layer ``text_encoder`` and the answer decoder ``text_decoder.*``.
- ``nlvr2`` (``pretrain_model_nlvr.pth`` and NLVR2 fine-tunes): ``F`` text layers, then every fusion
  layer twice (pairs with identical cross-attention key/value), ``ta_head`` or ``cls_head``.

Every layout carries the momentum copies (``*_m``) that the official model had; they map to the vlkit
teacher's copies (``teacher.copies.*``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlkit.convert.layout import Layout
from vlkit.convert.resize import resize_position_grid, truncate_positions
from vlkit.convert.rules import Drop, Rule, conv_stem_refusal, is_arange, temperature_transform
from vlkit.convert.target import Target
from vlkit.encoders.albef import AlbefConfig
from vlkit.objectives.answers import GenerateAnswers
from vlkit.objectives.bifusion import BiFusionClassify
from vlkit.objectives.classify import Classify
from vlkit.objectives.itc import ITC
from vlkit.objectives.itm import ITM
from vlkit.objectives.mlm import MLM

LAYOUTS = ("pretrain", "retrieval", "vqa", "nlvr2")
TEACHER = "teacher.copies."
NO_TEACHER = "the recipe has no momentum teacher (no `momentum` section, or no objective that reads it)"

DROPS = [
    Drop(r".*embeddings\.position_ids", "BERT's constant position-index buffer [0, 1, ..., N-1]; vlkit computes "
         "positions", check=is_arange),
    Drop(r"(.*)cls\.predictions\.decoder\.bias", "the same tensor as cls.predictions.bias (HF aliases them); vlkit "
         "keeps that one", same_as=r"\1cls.predictions.bias"),
    Drop(r"ta_head\..*", "the text-assignment head of ALBEF's NLVR2 pre-training (3 classes); vlkit's NLVR2 "
         "fine-tuning starts its own classifier"),
    Drop(r"text_(en|de)coder(_m)?\.(bert\.)?pooler\..*", "BERT's pooler; ALBEF reads the [CLS] token without it"),
]


def detect_layout(source: dict[str, Tensor]) -> str:
    """The ALBEF layout of a state dict, from its keys (and NLVR2's duplicated fusion layers)."""
    if any(k.startswith("text_decoder.") for k in source):
        return "vqa"
    if any(k.startswith("text_encoder.bert.") for k in source):
        return "pretrain"
    if any(k.startswith("ta_head.") for k in source) or _duplicated_fusion(source):
        return "nlvr2"
    return "retrieval"


def _duplicated_fusion(source: dict[str, Tensor]) -> bool:
    """Whether the cross-attention layers come in pairs with identical key/value weights (NLVR2)."""
    prefix, suffix = "text_encoder.encoder.layer.", ".crossattention.self.key.weight"
    layers = sorted(int(k[len(prefix):-len(suffix)]) for k in source if k.startswith(prefix) and k.endswith(suffix))
    if len(layers) < 2 or len(layers) % 2:
        return False
    return all(torch.equal(source[f"{prefix}{a}{suffix}"], source[f"{prefix}{b}{suffix}"])
               for a, b in zip(layers[::2], layers[1::2], strict=True))


def class_count(source: dict[str, Tensor]) -> int | None:
    """Classes of the checkpoint's ``cls_head`` (VE: 3, NLVR2: 2), if it has one."""
    head = source.get("cls_head.2.weight")
    return None if head is None else int(head.shape[0])


def _names(target: Target, layout: str) -> dict[str, str]:
    """The recipe's objective names, or the usual ones (whose absence the rules then report)."""
    classify = "nlvr2" if layout == "nlvr2" else "ve"
    return {
        "itc": target.objective(ITC) or "itc",
        "itm": target.objective(ITM) or "itm",
        "mlm": target.objective(MLM) or "mlm",
        "vqa": target.objective(GenerateAnswers) or "vqa",
        "cls": target.objective(Classify, BiFusionClassify) or classify,
    }


def _tower_rules(layout: str, target: Target, n: dict[str, str]) -> list[Rule]:
    """Image tower, projections and the text stack, online (``""``) and momentum (``_m``)."""
    cfg = target.encoder_cfg
    assert isinstance(cfg, AlbefConfig)  # the command checked the recipe's encoder
    fusion = cfg.fusion_layer
    rules: list[Rule] = []
    for suffix, root in (("", "encoder."), ("_m", TEACHER + "encoder.")):
        teacher = suffix == "_m"
        component, absent = (root, NO_TEACHER) if teacher else ("encoder.", "the recipe has no encoder")
        text = f"text_encoder{suffix}.bert." if layout == "pretrain" else f"text_encoder{suffix}."
        rules += [
            Rule(f"visual_encoder{suffix}.", f"{root}visual_encoder.", component, absent),
            Rule(f"vision_proj{suffix}.", f"{root}vision_proj.", component, absent),
            Rule(f"text_proj{suffix}.", f"{root}text_proj.", component, absent),
            Rule(f"{text}embeddings.", f"{root}text_encoder.embeddings.", component, absent),
        ]
        layers = f"{root}text_encoder.encoder.layer."
        if layout == "nlvr2":
            owner = f"{TEACHER}{n['cls']}__fusion." if teacher else f"objectives.{n['cls']}.fusion."
            rules += [
                Rule(f"{text}encoder.layer.", layers, component, absent, layered=True, stop=fusion),
                Rule(f"{text}encoder.layer.", owner + "layer.", owner,
                     "the recipe has no bi-fusion NLVR2 objective (task: {type: nlvr2, fusion: bi})"
                     + (" with distillation (a teacher copy)" if teacher else ""),
                     layered=True, first=fusion, shift=-fusion),
            ]
        else:
            rules.append(Rule(f"{text}encoder.layer.", layers, component, absent))
    return rules


def _head_rules(layout: str, target: Target, n: dict[str, str]) -> list[Rule]:
    """MLM head, answer decoder, classifier, ITM head, temperature and queues."""
    rules: list[Rule] = []
    for suffix, root in (("", "objectives."), ("_m", TEACHER)):
        teacher = suffix == "_m"
        sep = "__" if teacher else "."
        if layout == "pretrain":
            owner = f"{root}{n['mlm']}{sep}head."
            rules.append(Rule(f"text_encoder{suffix}.cls.predictions.", owner + "predictions.", owner,
                              "the recipe's teacher keeps no MLM head (objectives.mlm.distill is off)" if teacher
                              else "the recipe has no mlm objective"))
        if layout == "vqa":
            owner = f"{root}{n['vqa']}{sep}head."
            absent = ("the recipe's answer decoder has no teacher copy (task.distill is off)" if teacher else
                      "the recipe has no answer decoder (task: {type: vqa, head: rank})")
            rules += [Rule(f"text_decoder{suffix}.bert.embeddings.", owner + "embeddings.", owner, absent),
                      Rule(f"text_decoder{suffix}.bert.encoder.layer.", owner + "encoder.layer.", owner, absent),
                      Rule(f"text_decoder{suffix}.cls.predictions.", owner + "cls.predictions.", owner, absent)]
        if layout in ("retrieval", "nlvr2"):
            owner = f"{root}{n['cls']}{sep}head."
            rules.append(Rule(f"cls_head{suffix}.", owner + "net.", owner,
                              "the recipe's classifier has no teacher copy (task.distill is off)" if teacher else
                              f"the recipe has no {n['cls']} classifier (task: {{type: {n['cls']}}})"))
    itc, itm = f"objectives.{n['itc']}.", f"objectives.{n['itm']}."
    no_itc = "the recipe has no itc objective"
    itc_cfg = target.itc_config()
    log_scale = itc_cfg is not None and itc_cfg.parametrization == "log_scale"
    rules += [
        Rule("itm_head.", itm + "head.fc.", itm, "the recipe has no itm objective"),
        Rule("temp", itc + "temp.value", itc, no_itc, transform=temperature_transform(False, log_scale)),
        Rule("image_queue", itc + "queue.image_queue", itc + "queue.", no_itc + " with a queue (queue_size > 0)"),
        Rule("text_queue", itc + "queue.text_queue", itc + "queue.", no_itc + " with a queue (queue_size > 0)"),
        Rule("queue_ptr", itc + "queue.queue_ptr", itc + "queue.", no_itc + " with a queue (queue_size > 0)"),
    ]
    if layout == "retrieval":
        rules.append(Rule("idx_queue", itc + "queue.idx_queue", itc + "queue.", no_itc + " with a queue"))
    return rules


def _resize(key: str, value: Tensor, shape: torch.Size) -> tuple[Tensor, str] | None:
    if key.endswith("visual_encoder.pos_embed"):
        return resize_position_grid(value, shape)
    if key.endswith("embeddings.position_embeddings.weight"):
        return truncate_positions(value, shape)
    return None


def _derive(state: dict[str, Tensor]) -> list[tuple[str, Tensor, str]]:
    """``position_ids`` for every BERT embedding, ``cls.predictions.decoder.bias`` for every MLM head."""
    out = []
    for key, value in state.items():
        if key.endswith("embeddings.position_embeddings.weight"):
            ids = key.replace("position_embeddings.weight", "position_ids")
            out.append((ids, torch.arange(value.shape[0]).unsqueeze(0), "BERT's position-index buffer"))
        if key.endswith("cls.predictions.bias"):
            out.append((key.replace("predictions.bias", "predictions.decoder.bias"), value,
                        "the same tensor as cls.predictions.bias"))
    return out


def albef_layout(name: str, target: Target) -> Layout:
    """The rules of ALBEF layout ``name`` for the recipe's model."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown ALBEF layout `{name}`; choose one of {', '.join(LAYOUTS)}")
    names = _names(target, name)
    return Layout(family="albef", name=name, rules=_tower_rules(name, target, names) + _head_rules(name, target, names),
                  drops=list(DROPS), resize=_resize, derive=_derive,
                  refuse=conv_stem_refusal("ALBEF", "encoder.image.stem=patch"))


def layout_of_model(target: Target) -> str:
    """The official layout a vlkit ALBEF model exports to by default."""
    if target.objective(GenerateAnswers):
        return "vqa"
    if target.objective(BiFusionClassify):
        return "nlvr2"
    if target.objective(MLM):
        return "pretrain"
    return "retrieval"
