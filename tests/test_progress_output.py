"""What a researcher sees while vlkit works: a progress bar for every long phase, log lines above the bars
(never across one), no profiler chatter, the progress switch obeyed, and `vlkit eval` speaking of
evaluation only."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from vlkit import progress
from vlkit.cli import main
from vlkit.core import progress as core_progress
from vlkit.data.synthetic import SynthConfig, generate


def segments(text: str) -> list[str]:
    """What stays on screen piece by piece: text between line breaks and carriage returns, stripped."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


@contextlib.contextmanager
def console() -> Iterator[logging.Handler]:
    """A root handler writing to stderr as it is now (pytest's capture of the test call), as `vlkit`'s
    logging.basicConfig installs one."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_log_lines_and_warnings_go_above_the_bar_and_the_console_is_restored(capsys):
    root = logging.getLogger()
    with console() as handler:
        with progress.bar(4, "counting", unit="thing") as bar:
            assert handler not in root.handlers  # stands aside while the bar is drawn
            bar.update(2)
            bar.refresh()
            logging.getLogger("vlkit.test").info("a log line while the bar is drawn")
            with warnings.catch_warnings():  # pytest records warnings; the default display is replaced like this
                warnings.simplefilter("always")
                warnings.showwarning = progress._warning_above_bars
                warnings.warn("a warning while the bar is drawn", UserWarning, stacklevel=1)
            bar.update(2)
        assert handler in root.handlers  # back once the last bar closed
        logging.getLogger("vlkit.test").info("after the bar")
    err = capsys.readouterr().err
    parts = segments(err)
    assert "a log line while the bar is drawn" in parts, err  # a line of its own, not glued to the bar
    assert any(p.endswith("UserWarning: a warning while the bar is drawn") for p in parts), err
    assert "counting:  50%" in err and "after the bar" in parts


def test_the_switch_turns_every_bar_off_and_only_rank_0_draws(capsys, monkeypatch):
    with progress.switched(False):
        with progress.bar(3, "hidden") as bar, progress.switched(True), progress.bar(3, "hidden too") as inner:
            assert bar.disable and inner.disable
            bar.update(3)
        assert list(progress.track([1, 2], "hidden as well")) == [1, 2]
    monkeypatch.setenv("RANK", "1")
    with progress.bar(3, "another rank") as bar:
        assert bar.disable
    monkeypatch.setenv("RANK", "0")
    with progress.bar(3, "shown") as bar:
        assert not bar.disable
    err = capsys.readouterr().err
    assert "hidden" not in err and "another rank" not in err and "shown" in err
    assert core_progress.bar is progress.bar and core_progress.enabled()  # the data package draws the same bars


def test_in_a_log_file_only_the_outermost_bar_is_drawn(capsys):
    """Captured stderr is not a terminal: a nested bar's cursor movements would stay in the file."""
    with progress.bar(2, "outer") as outer, progress.bar(2, "inner") as inner:
        assert not outer.disable and inner.disable
    assert "\x1b[A" not in capsys.readouterr().err


def test_data_generation_shows_its_phases(capsys, tmp_path):
    generate(tmp_path / "data", SynthConfig(seed=3, train_images=12, val_images=4, test_images=4))
    err = capsys.readouterr().err
    for phase in ("rendering images", "writing annotations", "learning the tokenizer's vocabulary"):
        assert phase in err, err


def test_bench_shows_its_phases_without_profiler_chatter(capfd, caplog, tmp_path):
    """Kineto prints `USDT:` (and on a GPU `STAGE:`) lines from C++ straight to file descriptor 2 when the
    profiler starts and stops; they go to the debug log (`vlkit -v`), not the console."""
    caplog.set_level(logging.DEBUG, logger="vlkit.bench")
    assert main(["bench", "dual/tiny", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--profile-steps", "1",
                 "--peak-tflops", "0.1", "--out", str(tmp_path / "bench")]) == 0
    err = capfd.readouterr().err
    for phase in ("warm-up", "timed steps", "profiling", "counting FLOPs"):
        assert phase in err, err
    assert "USDT" not in err and "STAGE:" not in err and "gpuGetDeviceCount" not in err, err
    chatter = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "profiler_st" in r.getMessage()]
    if "KINETO_LOG_LEVEL" not in os.environ:  # which silences Kineto itself
        assert len(chatter) == 2, caplog.text  # profiler_start, profiler_stop: kept, at debug level


def test_native_stderr_is_logged_not_printed(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="vlkit.test")
    with progress.native_stderr_to_log(logging.getLogger("vlkit.test")):
        os.write(2, b"STAGE: something C++ printed\n")
    assert "STAGE" not in capfd.readouterr().err
    assert caplog.records[-1].getMessage() == "STAGE: something C++ printed"
    assert caplog.records[-1].levelno == logging.DEBUG


def test_eval_speaks_of_evaluation_only(tmp_path: Path, capsys, caplog, small_recipe, small_data):
    """Everything `vlkit eval` prints (its output, its log lines, its bars) names evaluation, never
    training."""
    from vlkit.train.pretrain import run_pretraining

    data = [*small_data, f"data.source.root={tmp_path / 'data'}", "eval.batch_size=8", "eval.k_test=4"]
    run_pretraining(small_recipe(tmp_path, "albef/tiny", "train.steps=1"), tmp_path / "run", progress=False)
    capsys.readouterr()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["eval", "albef/tiny", *data, "--checkpoint", str(tmp_path / "run"), "--out",
                 str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    said = "\n".join([captured.out, captured.err, *caplog.messages]).replace(str(tmp_path), "DIR")
    assert "encoding images" in said and "re-ranking (ITM)" in said and "swap probe" in said, said
    assert "train" not in said.lower(), said
