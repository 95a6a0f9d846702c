"""Hugging Face BERT weights into vlkit's :class:`~vlkit.nn.bert.BertStack` (ALBEF's text and fusion
layers, the dual encoder's text tower) and BERT's MLM head.

vlkit's stack has the HF ``BertModel`` layout, so keys load by name once the ``bert.`` prefix of
``BertForMaskedLM`` / ``BertForPreTraining`` checkpoints is removed (and TF-era ``LayerNorm.gamma/beta``
renamed). Layer ``i`` of the checkpoint initializes layer ``i`` of the stack: with ALBEF's
``fusion_layer: 6`` BERT-base's layers 0–5 become the text layers and 6–11 the self-attention and FFN
of the fusion layers, whose cross-attention is new (as in ALBEF). BERT's MLM head
(``cls.predictions.*``) is held on the encoder for the head the ``mlm`` objective builds (its decoder
tied to the word embeddings, as in BERT).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlkit.nn.bert import BertStack
from vlkit.weights.common import describe_keys, load_mapped, restore_prefix
from vlkit.weights.files import read_config, read_state_dict, strip_prefix
from vlkit.weights.hub import hub_folder
from vlkit.weights.report import LoadReport
from vlkit.weights.sources import Source, TowerInitError

log = logging.getLogger("vlkit.weights")

ANCHOR = "embeddings.word_embeddings.weight"
HEAD_PREFIX = "cls.predictions."
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_HEAD_KEYS = {  # checkpoint key (after cls.predictions.) → vlkit MLMHead key
    "transform.dense.weight": "predictions.transform.dense.weight",
    "transform.dense.bias": "predictions.transform.dense.bias",
    "transform.LayerNorm.weight": "predictions.transform.LayerNorm.weight",
    "transform.LayerNorm.bias": "predictions.transform.LayerNorm.bias",
    "bias": "predictions.bias",
    "decoder.bias": "predictions.bias",  # HF aliases decoder.bias to bias
    "decoder.weight": "predictions.decoder.weight",
}


def fetch_bert_state(source: Source, key: str) -> tuple[dict[str, Tensor], dict[str, Any] | None, str]:
    """``(state, config.json or None, where it came from)`` of a BERT folder, file or hub repository."""
    if source.kind == "timm":
        raise TowerInitError(f"{key}: `{source.text}`: text towers start from a BERT folder or hub repository")
    path = hub_folder(source.name, key) if source.kind == "hub" else source.path
    state, file = read_state_dict(path)
    return state, read_config(path), str(file if source.kind == "path" else f"{source.name} ({Path(file).parent})")


def normalize_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """TF-era names (``LayerNorm.gamma``/``beta``) as ``weight``/``bias``; ``position_ids`` dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        out[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)] = v
    return out


def check_config(config: dict[str, Any] | None, stack: BertStack, base: str, report: LoadReport) -> None:
    """What only ``config.json`` tells: architecture, heads, activation, LayerNorm epsilon."""
    if config is None:
        report.notes.append("no config.json beside the weights: heads and activation not checked")
        return
    cfg = stack.cfg
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise TowerInitError(f"{base}.init: model_type `{model_type}` is not BERT; vlkit's text tower loads BERT "
                             "checkpoints (model_type bert)")
    if (kind := config.get("position_embedding_type", "absolute")) != "absolute":
        raise TowerInitError(f"{base}.init: position_embedding_type `{kind}`; vlkit's BERT has absolute positions")
    if (heads := config.get("num_attention_heads", cfg.heads)) != cfg.heads:
        raise TowerInitError(f"{base}.init: the checkpoint has {heads} attention heads, {base}.heads is {cfg.heads}")
    if (act := config.get("hidden_act", "gelu")) != "gelu":
        report.notes.append(f"hidden_act `{act}`: vlkit's BERT uses exact GELU (outputs differ slightly)")
    if (eps := config.get("layer_norm_eps", cfg.eps)) != cfg.eps:
        report.notes.append(f"the checkpoint's layer_norm_eps is {eps}, {base}.eps is {cfg.eps}")


def check_shapes(state: dict[str, Tensor], stack: BertStack, base: str) -> None:
    """Vocabulary, width and FFN width must match the recipe; errors name both values and the key."""
    cfg = stack.cfg
    vocab, dim = state[ANCHOR].shape
    if vocab != cfg.vocab_size:
        raise TowerInitError(f"{base}.init: the checkpoint's vocabulary has {vocab} WordPieces, {base}.vocab_size is "
                             f"{cfg.vocab_size}; set {base}.vocab_size: {vocab} and use the checkpoint's tokenizer "
                             "(data.tokenizer: its folder)")
    if dim != cfg.dim:
        raise TowerInitError(f"{base}.init: the checkpoint's hidden size is {dim}, {base}.dim is {cfg.dim}")
    ffn = state.get("encoder.layer.0.intermediate.dense.weight")
    if ffn is not None and ffn.shape[0] != cfg.intermediate:
        raise TowerInitError(f"{base}.init: the checkpoint's intermediate size is {ffn.shape[0]}, {base}.intermediate "
                             f"is {cfg.intermediate}")


def _rows(name: str, table: Tensor, rows: int, base: str, field: str, report: LoadReport) -> Tensor:
    """The leading ``rows`` rows of an embedding table (positions, token types)."""
    if table.shape[0] < rows:
        raise TowerInitError(f"{base}.init: the checkpoint's `{name}` has {table.shape[0]} rows, {base}.{field} is "
                             f"{rows}; set {base}.{field} ≤ {table.shape[0]}")
    if table.shape[0] > rows:
        report.notes.append(f"`{name}`: first {rows} of {table.shape[0]} rows kept ({base}.{field})")
    return table[:rows]


def head_weights(state: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    """BERT's MLM head in vlkit's :class:`~vlkit.heads.mlm.MLMHead` layout; the decoder weight is
    kept only when it is not the word embeddings (BERT ties them)."""
    out: dict[str, Tensor] = {}
    words = state[ANCHOR]
    for key, value in state.items():
        if not key.startswith(HEAD_PREFIX) or (target := _HEAD_KEYS.get(key[len(HEAD_PREFIX):])) is None:
            continue
        if target == "predictions.decoder.weight" and value.shape == words.shape and torch.equal(value, words):
            report.held[key] = "tied to the word embeddings"
            continue
        out[target] = value
        report.held[key] = target
    return out


def load_bert(stack: BertStack, source: Source, key: str = "encoder.text.init",
              head_sink: dict[str, dict[str, Tensor]] | None = None) -> LoadReport:
    """Initialize ``stack`` from a BERT checkpoint; its MLM head (if any) goes to ``head_sink["mlm"]``.

    Args:
        stack: the text (and fusion) layers.
        source: a folder, file or hub repository.
        key: the recipe key, for messages.
        head_sink: where weights for heads built later are held (the encoder's); None: reported unused.
    """
    base = key.rsplit(".", 1)[0]
    raw, config, resolved = fetch_bert_state(source, key)
    normalized = normalize_keys(raw)
    state, prefix = strip_prefix(normalized, ANCHOR)
    if ANCHOR not in state:
        raise TowerInitError(f"{key}: {resolved} is not a BERT state dict (no `{ANCHOR}`; keys: {describe_keys(raw)})")
    report = LoadReport(tower=key, source=source.text, resolved=resolved)
    check_shapes(state, stack, base)
    check_config(config, stack, base, report)
    cfg = stack.cfg
    source_layers = 1 + max((int(m.group(1)) for k in state if (m := _LAYER.match(k))), default=-1)
    mapped: dict[str, tuple[Tensor, str]] = {}
    for name in stack.state_dict():  # same names as the checkpoint's; cross-attention is not in BERT
        if name == "embeddings.position_embeddings.weight" and name in state:
            mapped[name] = (_rows(name, state[name], cfg.max_positions, base, "max_positions", report), name)
        elif name == "embeddings.token_type_embeddings.weight" and name in state:
            mapped[name] = (_rows(name, state[name], cfg.type_vocab_size, base, "type_vocab_size", report), name)
        elif name in state and ".crossattention." not in name:
            mapped[name] = (state[name], name)
    fusion = stack.fusion_layer
    split = f"layers 0–{min(fusion, source_layers) - 1} → text layers"
    if fusion < cfg.layers:
        split += (f", layers {fusion}–{min(cfg.layers, source_layers) - 1} → fusion layers (self-attention, FFN; "
                  "cross-attention new)")
    report.notes.append(f"{source_layers} checkpoint layers: {split}")
    if source_layers < cfg.layers:
        report.notes.append(f"the stack has {cfg.layers} layers, the checkpoint {source_layers}: "
                            f"layers {source_layers}–{cfg.layers - 1} keep their initialization")
    head = head_weights(state, report)
    if head and head_sink is not None:
        head_sink["mlm"] = head
    elif head:
        report.held.clear()
    load_mapped(stack, mapped, report, state)
    if stack.embeddings.local_mixing is not None:
        stack.embeddings.local_mixing.zero_()
        report.notes.append(f"{base}.local_mixing starts at zero: the stack computes the checkpoint's BERT "
                            "until it trains")
    restore_prefix(report, prefix, normalized)
    log.info("%s", report.summary())
    return report
