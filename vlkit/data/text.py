"""Caption cleaning as ALBEF's ``pre_caption`` (``dataset/utils.py``), re-implemented.

lower-case → delete ``, . ' ! ? " ( ) * # : ; ~`` → ``-`` and ``/`` become spaces → ``<person>``
(Conceptual Captions' hypernym token) becomes ``person`` → runs of whitespace collapse to one space →
strip → keep the first ``max_words`` words (ALBEF: 30).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DELETED = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """``"A dog -- running (fast)!"`` → ``"a dog running fast"``."""
    text = _DELETED.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


@dataclass(frozen=True)
class CaptionCleaner:
    """A picklable ``str → str`` for data-loader workers: :func:`pre_caption` when ``enabled``."""

    enabled: bool = False
    max_words: int = 30

    def __call__(self, caption: str) -> str:
        return pre_caption(caption, self.max_words) if self.enabled else caption
