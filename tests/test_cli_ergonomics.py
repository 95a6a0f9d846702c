"""The command line as a researcher types it: overrides anywhere after the command, a resume line that
can be pasted back, ``base:`` naming shipped recipes, ``vlkit registry`` with the user's plug-ins, and
``vlkit ablate`` interrupted like ``vlkit train``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlkit import registry
from vlkit.cli import build_parser, main, parse_args, resume_command
from vlkit.core.errors import RecipeError
from vlkit.recipe import find_recipe, resolve
from vlkit.train.trainer import Interrupted

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- 1. overrides anywhere
# every command that takes KEY=VALUE overrides: argv with overrides before, between and after options,
# and what else must have been parsed
OVERRIDE_COMMANDS: dict[str, tuple[list[str], dict[str, object]]] = {
    "train": (["train", "albef/tiny", "a.b=1", "--no-progress", "c=[1, 2]", "--out", "D", "d.e={f: g h}"],
              {"no_progress": True, "out": "D", "recipe": "albef/tiny"}),
    "finetune": (["finetune", "R", "--overwrite", "a.b=1", "--out", "D", "c=2", "d.e=3"],
                 {"overwrite": True, "out": "D"}),
    "eval": (["eval", "R", "--checkpoint", "C", "a.b=1", "--out", "D", "c=2", "--overwrite", "d.e=3"],
             {"checkpoint": "C", "out": "D", "overwrite": True}),
    "bench": (["bench", "R", "--out", "D", "a.b=1", "--steps", "3", "c=2", "--flops-only", "d.e=3"],
              {"steps": 3, "flops_only": True}),
    "retrieve": (["retrieve", "R", "--checkpoint", "C", "a.b=1", "--text", "x=y", "c=2", "--out", "S.png", "d.e=3"],
                 {"text": ["x=y"], "out": "S.png"}),  # an option's value that looks like an override stays its value
    "convert": (["convert", "albef", "CKPT", "--recipe", "albef/tiny", "a.b=1", "--out", "D", "c=2", "--to",
                 "vlkit", "d.e=3"], {"family": "albef", "checkpoint": "CKPT", "recipe": "albef/tiny"}),
    "recipes show": (["recipes", "show", "R", "--params", "a.b=1", "--no-machine-checks", "c=2", "d.e=3"],
                     {"params": True, "no_machine_checks": True}),
    "data synth": (["data", "synth", "--out", "D", "a.b=1", "--workers", "2", "c=2", "d.e=3"],
                   {"out": "D", "workers": 2}),
}


def _commands_with_overrides(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands_with_overrides(sub, f"{prefix} {name}".strip())
        elif action.dest == "overrides":
            found.add(prefix)
    return found


def test_every_command_with_overrides_is_covered():
    assert _commands_with_overrides(build_parser()) == set(OVERRIDE_COMMANDS)


@pytest.mark.parametrize("command", sorted(OVERRIDE_COMMANDS))
def test_overrides_come_before_between_and_after_options(command):
    argv, expected = OVERRIDE_COMMANDS[command]
    args = parse_args(argv)
    first = argv.index("a.b=1")
    assert args.overrides == [w for w in argv[first:] if w in ("a.b=1", "c=2", "c=[1, 2]", "d.e=3", "d.e={f: g h}")]
    for key, value in expected.items():
        assert vars(args)[key] == value, key
    assert args.command_line == argv


@pytest.mark.parametrize("command", sorted(OVERRIDE_COMMANDS))
def test_an_unknown_option_is_still_argparses_error(command, capsys):
    argv, _ = OVERRIDE_COMMANDS[command]
    with pytest.raises(SystemExit) as stop:
        parse_args([*argv, "--no-such-option", "z=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: unrecognized arguments: --no-such-option" in err and "z=1" not in err


def test_a_bare_word_after_options_is_unrecognized_and_a_malformed_key_is_named(capsys):
    with pytest.raises(SystemExit):
        parse_args(["retrieve", "R", "--checkpoint", "C", "--text", "a", "red", "car", "--out", "S.png"])
    assert "unrecognized arguments: red car" in capsys.readouterr().err
    assert main(["recipes", "show", "albef/tiny", "--no-machine-checks", "train-lr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "override `train-lr=1` is not of the form key.path=value" in err


def test_commands_without_overrides_refuse_them(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["ablate", "grid.yaml", "--out", "D", "train.lr=1"])
    assert stop.value.code == 2 and "unrecognized arguments: train.lr=1" in capsys.readouterr().err


def test_list_options_and_resume_leave_overrides_to_the_recipe(tmp_path):
    args = parse_args(["bench", "R", "--steps", "2", "a=1", "--sweep-batch-sizes", "8", "16", "a=2", "--sweep-backends",
                       "sdpa", "b=3", "--out", "D"])
    assert args.sweep_batch_sizes == [8, 16] and args.sweep_backends == ["sdpa"]
    assert args.overrides == ["a=1", "a=2", "b=3"]  # in the order given: the last a wins
    args = parse_args(["train", "R", "--out", "D", "--resume", "train.max_steps=5"])
    assert args.resume is True and args.overrides == ["train.max_steps=5"]
    ckpt = tmp_path / "step=5"  # a checkpoint file whose name has the form of an override stays the checkpoint
    ckpt.write_bytes(b"")
    args = parse_args(["train", "R", "--resume", str(ckpt), "a=1"])
    assert args.resume == str(ckpt) and args.overrides == ["a=1"]


def test_overrides_after_options_reach_the_recipe(capsys):
    assert main(["recipes", "show", "albef/tiny", "--no-machine-checks", "seed=4", "train.lr=0.002"]) == 0
    out = capsys.readouterr().out
    assert "\nseed: 4\n" in out and "lr: 0.002" in out


# --------------------------------------------------------------------------- 2. the resume line
def test_the_continue_line_is_shell_quoted_and_pastes_back(tmp_path, monkeypatch, capsys):
    import vlkit.train.pretrain as pretrain

    def interrupted(recipe, out, **kwargs):
        raise Interrupted(signal.SIGTERM, out / "checkpoints" / "step_3.pt")

    monkeypatch.setattr(pretrain, "run_pretraining", interrupted)
    argv = ["train", "albef/tiny", "--no-progress", "description='a run (seed 0) & $HOME [and] {braces}'",
            "data.source={type: synthetic, train_images: 48, val_images: 6, test_images: 8}",
            "--out", str(tmp_path / "my run")]
    assert main(argv) == 128 + signal.SIGTERM
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    message, _, again = lines[0].partition("; continue with: ")
    assert message.startswith("interrupted by SIGTERM; checkpoint written to")
    assert shlex.split(again) == ["vlkit", *argv, "--resume"]


def test_the_resume_command_drops_overwrite_and_an_earlier_resume():
    argv = ["train", "R", "a=1", "--overwrite", "--out", "D"]
    assert resume_command(argv, None) == ["train", "R", "a=1", "--out", "D", "--resume"]
    assert resume_command(["train", "R", "--resume", "old.pt", "a=1"], "old.pt") == ["train", "R", "a=1", "--resume"]
    assert resume_command(["train", "R", "--res", "a=1"], True) == ["train", "R", "a=1", "--resume"]
    assert resume_command(["train", "R", "--resume=old.pt", "--out", "D"], "old.pt") == ["train", "R", "--out", "D",
                                                                                         "--resume"]


# --------------------------------------------------------------------------- 3. base: shipped names
def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_names_a_shipped_recipe(tmp_path):
    recipe = _write(tmp_path, "mine.yaml", "base: albef/tiny\nseed: 3\n")
    resolved = resolve(recipe)
    assert resolved.recipe.seed == 3 and resolved.recipe.encoder.size == "tiny"
    assert Path(resolved.sources[-2]).resolve() == find_recipe("albef/tiny")
    listed = _write(tmp_path, "listed.yaml", "base: [albef/tiny.yaml, extra.yaml]\n")
    _write(tmp_path, "extra.yaml", "seed: 9\n")
    assert resolve(listed).recipe.seed == 9  # a shipped name and a relative path in one list


def test_a_file_next_to_the_recipe_wins_over_a_shipped_name(tmp_path):
    _write(tmp_path, "albef/tiny.yaml", "base: ../other.yaml\n")  # same name as the shipped recipe
    _write(tmp_path, "other.yaml", f"base: {find_recipe('dual/tiny')}\ndescription: local\n")
    recipe = _write(tmp_path, "mine.yaml", "base: albef/tiny.yaml\n")
    assert resolve(recipe).recipe.description == "local"
    shipped = _write(tmp_path, "shipped.yaml", "base: albef/tiny\n")  # no file `albef/tiny` here: the shipped one
    assert resolve(shipped).recipe.encoder.type == "albef"


def test_a_missing_base_names_where_it_looked(tmp_path):
    recipe = _write(tmp_path, "sub/mine.yaml", "seed: 1\nbase: albef/tinyy\n")
    with pytest.raises(RecipeError) as err:
        resolve(recipe)
    message = str(err.value)
    assert "base recipe `albef/tinyy` does not exist" in message
    assert str(Path("sub") / "albef" / "tinyy") in message or str(tmp_path / "sub" / "albef" / "tinyy") in message
    assert "shipped recipe `albef/tinyy`" in message and "did you mean `albef/tiny`" in message
    assert err.value.source.endswith("mine.yaml:2")
    relative = _write(tmp_path, "rel.yaml", "base: ../nowhere.yaml\n")
    with pytest.raises(RecipeError, match=r"`\.\./nowhere\.yaml` does not exist: looked for .*nowhere\.yaml \(rel"):
        resolve(relative)


# --------------------------------------------------------------------------- 4. registry with plug-ins
PLUGIN = """
import vlkit


@vlkit.register("head", "{name}")
class Head:
    \"\"\"A head from a user's module.\"\"\"
"""


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A plug-in module (not imported yet) on sys.path: ``(module name, registered head name)``."""
    names = []

    def make(module: str, head: str) -> str:
        _write(tmp_path, f"{module}.py", PLUGIN.format(name=head))
        names.append((module, head))
        return module

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module, head in names:
        registry.unregister("head", head)
        sys.modules.pop(module, None)


def test_registry_lists_plugins_given_to_import(plugin_module, capsys):
    plugin_module("ergonomics_plugin_a", "ergo_head_a")
    plugin_module("ergonomics_plugin_b", "ergo_head_b")
    assert main(["registry", "head", "--import", "ergonomics_plugin_a", "--import", "ergonomics_plugin_b"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if "ergo_head_a" in line)
    assert row[0] == "ergo_head_a" and " ".join(row[1:]) == "A head from a user's module. [ergonomics_plugin_a]"
    assert "ergo_head_b" in out and "itm" in out  # beside the built-ins
    assert main(["registry", "--import", "no_such_plugin_module"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "`no_such_plugin_module` given to --import" in err


def test_registry_lists_the_plugins_a_recipe_imports(plugin_module, tmp_path, capsys):
    plugin_module("ergonomics_plugin_c", "ergo_head_c")
    recipe = _write(tmp_path, "r.yaml", "base: albef/tiny\nimports: [ergonomics_plugin_c]\n")
    assert main(["registry", "head", "--recipe", str(recipe)]) == 0
    assert "ergo_head_c" in capsys.readouterr().out
    assert main(["registry", "--recipe", "albef/tinyy"]) == 2
    assert "did you mean `albef/tiny`" in capsys.readouterr().err


@pytest.mark.slow
def test_the_documented_registry_command_lists_siglip():
    """docs/extending.md's `vlkit registry` line, run as written (one real process)."""
    doc = (ROOT / "docs" / "extending.md").read_text()
    line = next(row for row in doc.splitlines() if row.startswith("PYTHONPATH=examples/plugins vlkit registry"))
    words = shlex.split(line, comments=True)
    env = {**os.environ, "PYTHONPATH": words[0].split("=", 1)[1]}
    assert words[1] == "vlkit"
    result = subprocess.run([sys.executable, "-m", "vlkit", *words[2:]], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "siglip" in result.stdout and "[vlkit_siglip]" in result.stdout
    assert "step.image.feat` / `step.text.feat` are L2-normalized" in doc


# --------------------------------------------------------------------------- 5. ablate
def test_ablate_help_describes_the_grid_format(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["ablate", "--help"])
    assert stop.value.code == 0
    from vlkit.ablate.grid import GRID_FORMAT_HELP

    out = capsys.readouterr().out
    assert GRID_FORMAT_HELP.strip() in out  # line for line: the layout is kept (RawDescriptionHelpFormatter)
    assert "variants:" in out and "followups:" in out


def test_an_interrupted_ablation_ends_like_train(tmp_path, monkeypatch, capsys):
    import vlkit.ablate.runner as runner

    def interrupted(grid, out, *, progress=True):
        raise Interrupted(signal.SIGINT, out / "runs" / "full" / "seed0" / "checkpoints" / "step_3.pt")

    monkeypatch.setattr(runner, "run_grid", interrupted)
    grid = _write(tmp_path, "grid.yaml", textwrap.dedent("""\
        base: albef/tiny
        overrides: {train.steps: 3}
        variants: {full: {}}
    """))
    argv = ["ablate", str(grid), "--out", str(tmp_path / "the ablation"), "--no-progress"]
    assert main(argv) == 128 + signal.SIGINT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted by SIGINT; checkpoint written to"), lines
    again = lines[0].partition("; continue with: ")[2].partition(" (finished runs")[0]
    assert shlex.split(again) == ["vlkit", *argv]
