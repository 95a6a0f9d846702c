"""Answer normalization of the official VQA evaluation (the VQA API's ``vqaEval.py``), reimplemented.

Two answers count as the same when their normalized forms are equal; see :func:`normalize_answer`.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Punctuation the official evaluation removes or turns into a space. Not in the list, hence kept:
# the period (its own rule), the apostrophe, ``: # $ % & * ^ ~ |``.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Apostrophe-less (or misplaced-apostrophe) spellings → the contraction, word by word after lower-casing.
# The official table's capitalized keys ("Im", "Ive", "Id've") never match lower-cased words and are left
# out, as is its one reversed entry (somebody'd → somebodyd); no value is itself a key of another value.
CONTRACTIONS: dict[str, str] = {
    # ... n't
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "isnt": "isn't", "mightnt": "mightn't", "mustnt": "mustn't", "neednt": "needn't", "oughtnt": "oughtn't",
    "shant": "shan't", "shouldnt": "shouldn't", "wasnt": "wasn't", "werent": "weren't", "wont": "won't",
    "wouldnt": "wouldn't",
    # ... n't've
    "couldnt've": "couldn't've", "couldn'tve": "couldn't've", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    # ... 've
    "couldve": "could've", "mightve": "might've", "mustve": "must've", "notve": "not've",
    "shouldve": "should've", "theyve": "they've", "weve": "we've", "whatve": "what've", "whereve": "where've",
    "whove": "who've", "wouldve": "would've", "youve": "you've",
    # ... 'd and 'd've
    "hed": "he'd", "howd": "how'd", "itd": "it'd", "someoned": "someone'd", "somethingd": "something'd",
    "thered": "there'd", "theyd": "they'd", "whered": "where'd", "whod": "who'd", "youd": "you'd",
    "hed've": "he'd've", "he'dve": "he'd've", "itd've": "it'd've", "it'dve": "it'd've",
    "shed've": "she'd've", "she'dve": "she'd've", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "somethingd've": "something'd've", "something'dve": "something'd've", "thered've": "there'd've",
    "there'dve": "there'd've", "theyd've": "they'd've", "they'dve": "they'd've", "wed've": "we'd've",
    "we'dve": "we'd've", "whod've": "who'd've", "who'dve": "who'd've", "youd've": "you'd've",
    "you'dve": "you'd've",
    # ... 'll
    "howll": "how'll", "itll": "it'll", "somebodyll": "somebody'll", "someonell": "someone'll",
    "somethingll": "something'll", "theyll": "they'll", "whatll": "what'll", "wholl": "who'll",
    "whyll": "why'll", "youll": "you'll",
    # ... 's
    "hes": "he's", "hows": "how's", "let's": "let's", "she's": "she's", "somebodys": "somebody's",
    "someones": "someone's", "thats": "that's", "theres": "there's", "whats": "what's", "whens": "when's",
    "wheres": "where's", "whos": "who's", "whys": "why's",
    # ... 're
    "therere": "there're", "theyre": "they're", "whatre": "what're", "whyre": "why're", "youre": "you're",
    # y'all and the rest
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "maam": "ma'am", "oclock": "o'clock",
    "twas": "'twas", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
}

_PUNCT = re.compile("[" + re.escape(PUNCTUATION) + "]")
_PUNCT_BY_SPACE = re.compile(f"(?<= ){_PUNCT.pattern}|{_PUNCT.pattern}(?= )")
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?![0-9])")
_LINE_BREAK = re.compile(r"[\n\t]")


def strip_punctuation(text: str) -> str:
    """The official ``processPunctuation`` rule on ``text``.

    Each character of :data:`PUNCTUATION` is removed everywhere when the text contains a digit-comma-digit
    (``1,000``) or that character somewhere next to a space (``"red, white"``), and otherwise replaced by a
    space everywhere (``"t-shirt"`` → ``"t shirt"``). Then every period not followed by a digit is removed
    (``"yes."`` → ``"yes"``, ``"2.5"`` and ``".5"`` keep theirs).
    """
    if _PUNCT.search(text) is not None:
        if _DIGIT_COMMA_DIGIT.search(text) is not None:
            text = _PUNCT.sub("", text)
        else:
            spaced = set(_PUNCT_BY_SPACE.findall(text))
            text = _PUNCT.sub(lambda m: "" if m.group() in spaced else " ", text)
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", text)


def _normalize_word(word: str) -> str | None:
    word = NUMBER_WORDS.get(word, word)
    return None if word in ARTICLES else CONTRACTIONS.get(word, word)


@lru_cache(maxsize=1 << 16)
def normalize_answer(answer: str) -> str:
    """``answer`` as the official VQA evaluation compares it.

    In order:

    1. newlines and tabs become spaces; leading and trailing whitespace is stripped;
    2. punctuation (:func:`strip_punctuation`): ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` are removed
       when the answer holds a digit-comma-digit or the mark stands next to a space, else replaced by a
       space (``"1,000"`` → ``"1000"``, ``"red, white"`` → ``"red white"``, ``"t-shirt"`` → ``"t shirt"``);
       periods not followed by a digit are removed (``"yes."`` → ``"yes"``, ``"2.5"`` stays);
    3. lower-case, split on whitespace, and per word: number words ``none, zero, one … ten`` → digits
       (``"Two"`` → ``"2"``, ``"none"`` → ``"0"``), articles ``a, an, the`` dropped (``"the dog"`` →
       ``"dog"``, ``"a man's hat"`` → ``"man's hat"``), apostrophe-less contractions restored
       (:data:`CONTRACTIONS`: ``"dont"`` → ``"don't"``, ``"whats"`` → ``"what's"``); words re-joined with
       single spaces.

    The result is idempotent: normalizing a normalized answer changes nothing. Digits are ASCII ``0-9``.
    Unlike the official script (whose period pattern, by a slip, also caps the number of periods removed
    at 32) every period not before a digit is removed.
    """
    text = strip_punctuation(_LINE_BREAK.sub(" ", answer).strip())
    words = (_normalize_word(w) for w in text.lower().split())
    return " ".join(w for w in words if w is not None)
