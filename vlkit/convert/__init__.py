"""Converting official checkpoints: ALBEF (pre-train, retrieval, VQA, NLVR2 layouts) and VLMo, into
vlkit checkpoints that ``init_from`` and ``vlkit eval`` read, and back (``vlkit convert``).

Every source key is mapped, transformed (resized, re-parametrized) or dropped with a reason; every
weight of the recipe's model comes from the checkpoint or is filled and reported; an unknown,
missing or mis-shaped key is a :class:`ConversionError` naming it.
"""

from vlkit.convert.command import Converted, official_to_vlkit, vlkit_to_official
from vlkit.convert.engine import ConversionError
from vlkit.convert.io import UnsafeCheckpoint, load_official
from vlkit.convert.report import Accounting

__all__ = ["Accounting", "ConversionError", "Converted", "UnsafeCheckpoint", "load_official", "official_to_vlkit",
           "vlkit_to_official"]
