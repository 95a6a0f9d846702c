"""The user-error family: conditions a user can cause (a recipe key, a file, a flag) and fix.

The command line catches :class:`UserError` once and prints one line ``error: ...`` (exit 2); any
other exception is a bug in vlkit and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error a user can cause and fix; the message names the key or file and the fix."""


class RecipeError(UserError, ValueError):
    """A recipe problem found before anything heavy starts.

    Attributes:
        source: the file (or ``command line``) the offending key came from.
        key: the dotted key path, or ``""`` for the recipe as a whole.
    """

    def __init__(self, message: str, source: str = "", key: str = "") -> None:
        self.message = message
        self.source = source
        self.key = key
        super().__init__(f"{source}: {message}" if source else message)


class ConfigError(UserError, ValueError):
    """Raised by a config's ``__post_init__`` for a cross-field rule; ``key`` names the field."""

    def __init__(self, message: str, key: str = "") -> None:
        self.key = key
        super().__init__(message)

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key moved below ``prefix`` (for checks of nested sections)."""
        return ConfigError(str(self), key=f"{prefix}.{self.key}" if self.key else prefix)


class RegistryError(UserError, KeyError):
    """An unknown registry kind or name; the message lists the nearest registered names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class DataError(UserError, ValueError):
    """A data file or folder that a recipe or a command names is missing or unreadable (annotation
    lists, shards, image folders, a tokenizer); the message names the key or file and the fix."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder that does not exist (also a ``FileNotFoundError``)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that is missing, malformed, or does not fit the model; the message
    names the file and the fix."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was named (also a ``FileNotFoundError``)."""


class UnavailableError(UserError, RuntimeError):
    """This machine lacks what the recipe or command asks for (CUDA, xformers); the message names the key
    and the alternative."""


class NonFiniteError(RuntimeError):
    """A number vlkit was asked to produce cannot be trusted because its inputs are not finite: training
    weights, gradients or the loss became NaN or infinite, a checkpoint to evaluate holds such weights, or
    an evaluation scored NaN / infinity. Nothing was written from that state; the message names what was
    checked and what to do. The command line maps it to exit 3 (not a :class:`UserError`: the user's
    input may be fine and the numbers still have diverged)."""
