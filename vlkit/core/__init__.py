"""The contracts every other vlkit package types against; this package imports nothing else from vlkit.

- :mod:`~vlkit.core.batch`: the batch the loader hands the step, and its extras keys;
- :mod:`~vlkit.core.encodings`: what encoders return and fusion reads;
- :mod:`~vlkit.core.similarity`: contrastive similarities and drawn negatives;
- :mod:`~vlkit.core.step`: the :class:`StepView` objectives and samplers read;
- :mod:`~vlkit.core.outputs`: what an objective returns, and head roles;
- :mod:`~vlkit.core.loader`: what an objective asks the data loader for;
- :mod:`~vlkit.core.errors`: the user-error family the command line reports in one line;
- :mod:`~vlkit.core.progress`: the progress switch and bars as every package opens them (drawn by what
  :mod:`vlkit.progress` installs).
"""

from vlkit.core.batch import Batch, HardNegativeText, MaskedTokens, PhraseRegions
from vlkit.core.encodings import FusedEncoding, ImageEncoding, ImageKV, PatchMask, TextEncoding
from vlkit.core.errors import ConfigError, RecipeError, RegistryError, UserError
from vlkit.core.loader import HardNegativesRequest, LoaderRequest, MaskingConfig, PhraseRegionsRequest
from vlkit.core.outputs import ANSWER_HEAD, BOX_HEAD, CLASSIFY_HEAD, MATCH_HEAD, ObjectiveOutput
from vlkit.core.similarity import Negatives, Similarity
from vlkit.core.step import Memo, SimilarityProvider, StepView

__all__ = [
    "ANSWER_HEAD", "BOX_HEAD", "CLASSIFY_HEAD", "MATCH_HEAD", "Batch", "ConfigError", "FusedEncoding",
    "HardNegativeText", "HardNegativesRequest", "ImageEncoding", "ImageKV", "LoaderRequest", "MaskedTokens",
    "MaskingConfig", "Memo", "Negatives", "ObjectiveOutput", "PatchMask", "PhraseRegions", "PhraseRegionsRequest",
    "RecipeError", "RegistryError", "Similarity", "SimilarityProvider", "StepView", "TextEncoding", "UserError",
]
