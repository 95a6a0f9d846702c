"""Pre-trained weights for vlkit's towers (a recipe's ``init`` keys).

- ``encoder.image.init`` (ALBEF, dual): a timm / DeiT ViT (:mod:`vlkit.weights.timm_vit`), its position
  grid resized to the recipe's resolution;
- ``encoder.text.init`` (ALBEF, dual): a Hugging Face BERT (:mod:`vlkit.weights.hf_bert`), split into
  text and fusion layers, its MLM head held for the ``mlm`` objective;
- ``encoder.init`` (MoME): a BEiT / ViT into VLMo's multiway transformer (:mod:`vlkit.weights.beit_mome`).

:func:`vlkit.weights.apply.initialize_towers` applies them when the encoder is built and returns one
:class:`LoadReport` per tower. This package root imports nothing heavy (configs use
:mod:`vlkit.weights.sources` to validate ``init`` values).
"""

from vlkit.weights.report import LoadReport
from vlkit.weights.sources import Source, TowerInitError, parse_source

__all__ = ["LoadReport", "Source", "TowerInitError", "parse_source"]
