"""vlkit: vision-language pre-training in the line of ALBEF and VLMo.

The public entry points:

- :func:`register` (``vlkit.register(kind, name)``) adds a plug-in to a registry table;
- :func:`vlkit.recipe.load_recipe` resolves and validates a recipe;
- :func:`vlkit.build.build_encoder` builds the encoder a recipe names.
"""

from vlkit.registry import register

__version__ = "0.1.0"

__all__ = ["__version__", "register"]
