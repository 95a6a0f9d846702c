"""Downstream tasks (registry kind ``task``): what ``vlkit eval`` (and fine-tuning) runs when a recipe
has a ``task`` section."""
