"""The embedded synthetic dataset: coloured shapes in spatial relations, with captions, compositional
twins, swap probes, VQA, NLVR2 and visual-entailment annotations and a WordPiece tokenizer, written in
the formats ALBEF's own code reads.

>>> from vlkit.data.synthetic import SynthConfig, ensure
>>> folder = ensure("data", SynthConfig(train_images=200))          # doctest: +SKIP

Modules: :mod:`.lexicon` (words), :mod:`.scene` (sampling, geometry, twins), :mod:`.render` (PIL),
:mod:`.semantics` (parser and truth), :mod:`.captions` (grammar, swaps), :mod:`.vqa`, :mod:`.pairs`
(NLVR2, VE), :mod:`.tokenizer`, :mod:`.writer` (:func:`generate`), :mod:`.cache` (:func:`ensure`).
"""

from vlkit.data.synthetic.cache import dataset_dir, ensure, is_complete
from vlkit.data.synthetic.config import FORMAT_VERSION, SynthConfig
from vlkit.data.synthetic.writer import SynthSummary, generate, read_scenes

__all__ = [
    "FORMAT_VERSION", "SynthConfig", "SynthSummary", "dataset_dir", "ensure", "generate", "is_complete", "read_scenes",
]
