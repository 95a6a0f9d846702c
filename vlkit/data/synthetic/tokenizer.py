"""A BERT WordPiece tokenizer for the synthetic text, saved as a standard BERT folder.

The folder holds ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``; ``transformers.AutoTokenizer`` and ``BertTokenizerFast`` load it offline.
Special tokens come first: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4.

The pipeline is BERT's, built with the ``tokenizers`` models API (BERT normalizer, lower-casing, BERT
pre-tokenizer, WordPiece model, ``[CLS] … [SEP]`` post-processor). The vocabulary is learned from the
training text deterministically: every character of the alphabet (as a word start and as a ``##``
continuation, so any word of that alphabet has a spelling and nothing maps to ``[UNK]``), then whole
words by decreasing frequency (ties alphabetical) up to ``vocab_size``. ``tokenizers``'
``WordPieceTrainer`` breaks ties between equally frequent merges in hash order, so its vocabulary differs
from run to run; in this closed world a whole-word vocabulary is also what a tiny model learns best.
The training text is extended with every word of the lexicon, so rare words are covered too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vlkit.core import progress
from vlkit.data.synthetic.files import write_bytes, write_json
from vlkit.data.synthetic.lexicon import all_words

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_MAX_LENGTH = 512


def learn_vocab(texts: Iterable[str], vocab_size: int, progress_desc: str | None = None) -> list[str]:
    """Special tokens, the alphabet (plain and ``##``), then the most frequent words (see module doc);
    ``progress_desc``: count the texts with a progress bar of that name."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in progress.track(texts, progress_desc or "", unit="text") if progress_desc else texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = sorted({c for w in counts for c in w})
    vocab = list(SPECIAL_TOKENS) + alphabet + [f"##{c}" for c in alphabet]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(vocab)} tokens of specials and alphabet")
    seen = set(vocab)
    words = sorted((w for w in counts if w not in seen), key=lambda w: (-counts[w], w))
    return vocab + words[: vocab_size - len(vocab)]


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    """BERT's tokenization pipeline around a WordPiece model with ``vocab`` (ids in list order)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"]))
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int) -> int:
    """Learn the vocabulary from ``texts`` (plus the lexicon) and write the tokenizer folder ``out_dir``;
    returns the vocabulary size."""
    vocab = learn_vocab([*texts, *all_words()], vocab_size, progress_desc="learning the tokenizer's vocabulary")
    tok = build_tokenizer(vocab)
    write_bytes(out_dir / "vocab.txt", ("\n".join(vocab) + "\n").encode("utf-8"))
    write_bytes(out_dir / "tokenizer.json", (tok.to_str(pretty=True) + "\n").encode("utf-8"))
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS, strict=True))
    write_json(out_dir / "special_tokens_map.json", names)
    write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
        "strip_accents": None, "model_max_length": MODEL_MAX_LENGTH, "clean_up_tokenization_spaces": True,
        **names,
    })
    return len(vocab)
