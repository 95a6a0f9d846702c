"""Ablations from recipes: ``vlkit ablate GRID --out DIR`` (see :mod:`vlkit.ablate.grid`)."""
