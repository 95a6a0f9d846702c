"""The command line: exit codes and what users read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlkit.cli import main


def test_recipes_show_prints_the_resolved_recipe(capsys):
    assert main(["recipes", "show", "recipes/albef/tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved from: ")
    assert "fusion_layer: 2" in out and "image_size: 64" in out


@pytest.mark.parametrize("name", ["albef/tiny", "vlmo/tiny", "dual/tiny"])
def test_shipped_tiny_recipes_show(name, capsys):
    assert main(["recipes", "show", name]) == 0


def test_recipes_show_bad_key_exits_2_and_names_it(capsys):
    assert main(["recipes", "show", "recipes/albef/tiny.yaml", "encoder.fusion_layr=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key `encoder.fusion_layr`; did you mean `fusion_layer`?" in err


def test_recipes_show_params_reports_parts(capsys):
    assert main(["recipes", "show", "albef/base", "--params", "--no-machine-checks"]) == 0  # its data is elsewhere
    out = capsys.readouterr().out
    assert "vision" in out and "85,844,736" in out  # ViT-B/16 at 256 px
    assert "fusion" in out and "total" in out
    rows = {" ".join(line.split()[:-2]): int(line.split()[-2].replace(",", ""))
            for line in out.splitlines() if line.split() and line.split()[-1].endswith("M")}
    assert rows["objective itm"] == 768 * 2 + 2  # Linear(768, 2)
    # MLM transform (dense + LayerNorm) and vocabulary bias; the decoder is tied to the word embeddings
    assert rows["objective mlm"] == 768 * 768 + 768 + 2 * 768 + 30522
    assert rows["objective itc"] == 1  # the temperature
    assert rows["total"] == sum(v for k, v in rows.items() if k != "total")
    assert 209e6 < rows["total"] < 211e6  # ALBEF's ~210M online model


def test_recipes_list_and_registry(capsys):
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    assert "albef/tiny" in out and "vlmo/base" in out
    assert main(["registry"]) == 0
    out = capsys.readouterr().out
    assert "encoder:" in out and "albef" in out and "mome" in out and "head:" in out
    assert main(["registry", "encodr"]) == 2


@pytest.mark.slow
def test_console_script_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "vlkit", "recipes", "show", "albef/tiny", "seed=x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "`seed` must be an integer" in result.stderr
