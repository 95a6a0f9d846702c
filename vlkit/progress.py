"""Progress bars and clean console output for every long phase: training, evaluation, benchmarks,
ablations, data generation.

Importing this module installs its tqdm bars as the factory of :mod:`vlkit.core.progress` (where the
lower packages, which may import only ``core``, open their bars); the modules that show progress import
it, and so does anything that wants data generation's bars (``import vlkit.progress``).

- :func:`bar` / :func:`track`: a tqdm bar on stderr, drawn unless progress is switched off
  (:func:`switched`: ``vlkit train --no-progress`` / ``progress=False``, ``vlkit ablate --no-progress``;
  every bar opened inside, however deep, is off), on ranks other than 0, or with tqdm's own
  ``TQDM_DISABLE=1``. As with the trainer's bar since the start, bars are not turned off when stderr is
  not a terminal (``--no-progress`` logs lines instead), but there only the outermost bar is drawn: a
  nested bar's cursor movements would stay in the log file as junk (``vlkit ablate``'s runs then log
  their steps as lines under the grid's bar).
- While a bar is drawn, log records bound for the console (the root logger's handlers on stdout /
  stderr) are written above the bars with ``tqdm.write``, never across one, and so are Python warnings
  shown the default way; both are restored when the last bar closes.
- :func:`native_stderr_to_log`: what C / C++ libraries write to file descriptor 2 inside the block (the
  profiler's ``USDT:`` / ``STAGE:`` lines, past ``sys.stderr`` and logging) is logged at debug level
  instead (``vlkit -v`` shows it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from vlkit.core import progress as _core
from vlkit.core.progress import bar, enabled, switched, track

__all__ = ["MININTERVAL", "bar", "enabled", "install", "native_stderr_to_log", "switched", "track"]

MININTERVAL = 0.5
"""Seconds between two redraws of a bar (a log file receives at most two updates a second per bar)."""


@contextlib.contextmanager
def _tqdm_bar(total: float | None, desc: str | None, *, unit: str = "it", leave: bool = False,
              initial: float = 0, **options: Any) -> Iterator[Any]:
    """A tqdm bar on stderr for the block; console logging and warnings go above it while it is drawn.
    Where stderr is not a terminal (a log file), only the outermost bar is drawn: nested bars need cursor
    movements, which a file keeps as junk."""
    options = {"file": sys.stderr, "dynamic_ncols": True, "mininterval": MININTERVAL, **options}
    if _Console.drawn() and not _is_terminal(options["file"]):
        options["disable"] = True
    progress = tqdm(total=total, desc=desc, unit=unit, leave=leave, initial=initial, **options)
    drawn = not progress.disable  # tqdm's TQDM_DISABLE=1 turns it off
    if drawn:
        _Console.bar_opened()
    try:
        yield progress
    finally:
        progress.close()
        if drawn:
            _Console.bar_closed()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def install() -> None:
    """Draw every bar of vlkit with tqdm (done when this module is imported; calling it again is harmless)."""
    _core.install(_tqdm_bar)


class _AboveBars(logging.Handler):
    """Stands in for a console handler while bars are drawn: formats as it does and writes with
    ``tqdm.write`` (the bars are cleared, the line written, the bars drawn again)."""

    def __init__(self, replaced: logging.StreamHandler[Any]) -> None:
        super().__init__(replaced.level)
        self.replaced = replaced
        self.filters = list(replaced.filters)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.replaced.format(record), file=self.replaced.stream)
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise from a handler
            self.handleError(record)


def _console_handler(handler: logging.Handler) -> bool:
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and handler.stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))


_default_showwarning = warnings.showwarning


def _warning_above_bars(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line)
    tqdm.write(text.rstrip("\n"), file=file if file is not None else sys.stderr)


class _Console:
    """Counts the bars drawn; the first to open routes console logging and warnings above the bars, the
    last to close restores them. Only handlers already on the root logger are replaced, none is added."""

    _lock = threading.Lock()
    _drawn = 0
    _swapped: list[tuple[logging.Handler, logging.Handler]] = []
    _showwarning: Any = None

    @classmethod
    def drawn(cls) -> int:
        """The bars drawn now."""
        return cls._drawn

    @classmethod
    def bar_opened(cls) -> None:
        with cls._lock:
            cls._drawn += 1
            if cls._drawn > 1:
                return
            root = logging.getLogger()
            for handler in list(root.handlers):
                if _console_handler(handler):
                    assert isinstance(handler, logging.StreamHandler)
                    above = _AboveBars(handler)
                    root.handlers[root.handlers.index(handler)] = above
                    cls._swapped.append((handler, above))
            if warnings.showwarning is _default_showwarning:  # pytest's recorder and other hooks are left alone
                cls._showwarning = warnings.showwarning
                warnings.showwarning = _warning_above_bars

    @classmethod
    def bar_closed(cls) -> None:
        with cls._lock:
            cls._drawn -= 1
            if cls._drawn > 0:
                return
            root = logging.getLogger()
            for handler, above in cls._swapped:
                if above in root.handlers:
                    root.handlers[root.handlers.index(above)] = handler
            cls._swapped = []
            if cls._showwarning is not None and warnings.showwarning is _warning_above_bars:
                warnings.showwarning = cls._showwarning
            cls._showwarning = None


@contextlib.contextmanager
def native_stderr_to_log(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[None]:
    """Within the block, whatever is written to file descriptor 2 — C / C++ libraries print there directly,
    past ``sys.stderr`` and logging — is captured and, after the block, logged line by line to ``logger``
    at ``level``. Keep the block short: Python's own stderr output inside it is captured as well."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    logger.log(level, "%s", line.rstrip())


install()
