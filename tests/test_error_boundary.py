"""The one error boundary of the command line, and the checks before heavy work.

Every bad input a user can give ends in exit 2 and exactly one line ``error: ...`` on stderr, no
traceback, before anything heavy starts; ``vlkit recipes show`` finds what ``vlkit train`` would. Ctrl-C
outside the trainer ends in one line and exit 130; a full disk in one line naming where, exit 2; any other
exception keeps its traceback (a bug in vlkit). docs/reliability.md lists what each test proves.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlkit import cli
from vlkit.cli import EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_USER_ERROR, main
from vlkit.core.errors import NonFiniteError, UserError

ROOT = Path(__file__).resolve().parent.parent


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = EXIT_USER_ERROR,
                   prefix: str = "error: ") -> str:
    """Run the command line in-process: ``code``, and one line on stderr starting ``prefix``, no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tokenizer_folder(path: Path, size: int) -> Path:
    """A BERT-style folder whose vocab.txt holds ``size`` tokens."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    write(path / "vocab.txt", "\n".join(specials + [f"w{i}" for i in range(size - len(specials))]) + "\n")
    return path


# ------------------------------------------------------------------------------------------ recipe values
RECIPE_PROBLEMS = [
    ("albef/tiny", "seed=-1", "`seed`: must be in [0, 4294967295], got -1"),
    ("albef/tiny", "seed=4294967296", "`seed`: must be in [0, 4294967295]"),
    ("albef/tiny", "train.lr=.nan", "`train.lr` must be a finite number, got nan"),
    ("albef/tiny", "train.lr=.inf", "`train.lr` must be a finite number, got inf"),
    ("albef/tiny", "train.batch_size=9223372036854775808", "beyond what a 64-bit integer holds"),
    ("albef/tiny", "train.steps=-5", "`train.steps`: must be"),
    ("albef/tiny", "objectives.itc.weight=-0.5", "`objectives.itc.weight`: must be ≥ 0"),
    ("albef/tiny", "objectives.mlm.mask_prob=1.5", "`objectives.mlm.mask_prob`: must be in [0, 1]"),
    ("albef/tiny", "momentum.decay=.nan", "`momentum.decay` must be a finite number"),
    ("albef/tiny", "seed=[1, 2]", "`seed` must be an integer, got a list"),
    ("albef/tiny", "encoder.image.heads=0", "`encoder.image.heads`: must be in [1,"),
    ("albef/tiny", "encoder.image.depth=100000000", "`encoder.image.depth`: must be in [1, 1024]"),
    ("albef/tiny", "freeze=[encoder.nothing.*]", "`freeze[0]`: `encoder.nothing.*` matches no trainable parameter"),
    ("albef/tiny", "train.device=cdua", "`train.device`: `cdua` is not a device"),
    ("albef/tiny", "data.train_split=trian", "`data.train_split` is `trian`, but the data source has the splits "
                                            "train, val, test; did you mean `train`?"),
    ("albef/tiny", "encoder.text.vocab_size=100", "the synthetic data's tokenizer has 159 ids but the encoder's "
                                                  "vocabulary has 100 rows"),
    ("dual/tiny", "objectives.mim={}", "hides image patches"),
    ("dual/tiny", "data.source={type: json_pairs, splits: {train: [a.json]}}",
     "`data.tokenizer` is not set and data source `json_pairs` brings no tokenizer"),
]


@pytest.mark.parametrize("command", ["show", "train"])
@pytest.mark.parametrize(("recipe", "override", "expected"), RECIPE_PROBLEMS)
def test_recipe_problems_end_in_one_line_exit_2_for_show_and_train(capsys, tmp_path, command, recipe, override,
                                                                   expected):
    argv = ["recipes", "show", recipe, override] if command == "show" else \
        ["train", recipe, override, "--out", str(tmp_path / "run")]
    line = one_error_line(capsys, argv)
    assert expected in line
    assert not (tmp_path / "run").exists()  # nothing was started


# ------------------------------------------------------------------------------------------ recipe files
@pytest.mark.parametrize(("text", "expected"), [
    (b"seed: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 6)"),
    (b"encoder: albef\nnull: 3\n", "the key `null` is null, not a name"),
    (b"encoder: {type: albef, 1: 3}\n", "the key `1` is an integer, not a name"),
    (b"a: &a [1, *a]\n", "recursive aliases are not allowed"),
    (b"a: " + b"[" * 40 + b"]" * 40 + b"\n", "nests lists and mappings more than 32 levels deep"),
    (b"encoder: albef\nseed: " + b"9" * 5000 + b"\n", "an integer of 5000 characters is no recipe value"),
    (b"seed: 1\nseed: 2\n", "duplicate key `seed` (first on line 1)"),
    (b"seed: [1\n", "invalid YAML at line"),
])
def test_bad_recipe_files_end_in_one_line_naming_the_file(capsys, tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    line = one_error_line(capsys, ["recipes", "show", str(path)])
    assert expected in line and "bad.yaml" in line


def alias_bomb() -> str:
    """Nine levels of ten aliases each: 10⁹ values once expanded, a few hundred bytes on disk."""
    levels = ["a: &a {x: 1, y: 2}"]
    for i in range(1, 10):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        levels.append(f"{name}: &{name} {{" + ", ".join(f"k{j}: *{prev}" for j in range(10)) + "}")
    return "\n".join(levels) + "\nencoder: albef\n"


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bomb", alias_bomb(), "expands to more than 50,000 values (aliases expanded)"),
    ("huge", "\n".join(f"k{i}: {i}" for i in range(500_000)) + "\n", "larger than 1,000,000 bytes"),
    ("wide", "\n".join(f"k{i}: {i}" for i in range(60_000)) + "\n", "expands to more than 50,000 values"),
])
@pytest.mark.parametrize("command", ["show", "train"])
def test_hostile_recipes_are_refused_within_a_second(capsys, tmp_path, name, text, expected, command):
    path = write(tmp_path / f"{name}.yaml", text)
    argv = ["recipes", "show", str(path)] if command == "show" else ["train", str(path), "--out", str(tmp_path / "r")]
    start = time.perf_counter()
    line = one_error_line(capsys, argv)
    assert time.perf_counter() - start < 1.0
    assert expected in line and f"{name}.yaml" in line


def flow_bomb() -> str:
    """The alias bomb as one flow-style value: ``[&a [1, ...], &b [*a, ...], ...]``."""
    items = ["&l0 [" + ", ".join(["1"] * 10) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "[" + ", ".join(items) + "]"


def test_hostile_override_values_are_refused_within_a_second(capsys):
    start = time.perf_counter()
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", "description=" + flow_bomb()])
    assert "command line" in line and "expands to more than 50,000 values" in line
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", "seed=" + "[" * 40 + "]" * 40])
    assert "more than 32 levels deep" in line and "command line" in line
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", "." .join(["a"] * 100) + "=1"])
    assert "more than 32 keys deep" in line
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------ data and files
def json_pairs(tmp_path: Path, *, annotations: bool = True, images: bool = True, swaps: bool = True,
               tokenizer: bool = True) -> list[str]:
    """Overrides that point dual/tiny at ALBEF-style files under ``tmp_path`` (some left missing)."""
    data = tmp_path / "data"
    if annotations:
        write(data / "train.json", json.dumps([{"image": "a.png", "caption": "a red square"}]))
    if images:
        (data / "images").mkdir(parents=True, exist_ok=True)
    if swaps:
        write(data / "swaps.json", "[]")
    source = (f"data.source={{type: json_pairs, splits: {{train: [{data / 'train.json'}]}}, "
              f"image_root: {data / 'images'}, swaps: {{test: {data / 'swaps.json'}}}}}")
    folder = tokenizer_folder(tmp_path / "tok", 100) if tokenizer else tmp_path / "no-tokenizer"
    return [source, f"data.tokenizer={folder}"]


@pytest.mark.parametrize(("missing", "expected"), [
    ({"annotations": False}, "`data.source.splits.train[0]`: file"),
    ({"images": False}, "`data.source.image_root`: folder"),
    ({"swaps": False}, "`data.source.swaps.test`: file"),
    ({"tokenizer": False}, "`data.tokenizer`: folder"),
])
@pytest.mark.parametrize("command", ["show", "train"])
def test_missing_data_paths_are_named_with_their_key(capsys, tmp_path, missing, expected, command):
    overrides = json_pairs(tmp_path, **missing)
    argv = ["recipes", "show", "dual/tiny", *overrides] if command == "show" else \
        ["train", "dual/tiny", *overrides, "--out", str(tmp_path / "run")]
    line = one_error_line(capsys, argv)
    assert expected in line and "does not exist" in line


def test_the_complete_json_pairs_recipe_passes_the_checks(capsys, tmp_path):
    assert main(["recipes", "show", "dual/tiny", *json_pairs(tmp_path)]) == 0


def test_missing_shards_are_named(capsys, tmp_path):
    source = f"data.source={{type: webdataset, shards: ['{tmp_path}/shard-{{0..1}}.tar'], epoch_samples: 8}}"
    line = one_error_line(capsys, ["recipes", "show", "dual/tiny", source, f"data.tokenizer={tmp_path}"])
    assert "`data.source.shards[0]`: file" in line and "shard-0.tar does not exist" in line


def test_a_tokenizer_larger_than_the_text_embedding_table_is_refused(capsys, tmp_path):
    folder = tokenizer_folder(tmp_path / "tok", 600)
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", f"data.tokenizer={folder}"])
    assert "has 600 ids but the encoder's vocabulary has 512 rows" in line and "encoder.text.vocab_size" in line


def test_missing_and_malformed_init_from_files(capsys, tmp_path):
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", f"init_from={tmp_path / 'none'}"])
    assert "`init_from`: no checkpoint at" in line
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    line = one_error_line(capsys, ["train", "albef/tiny", f"init_from={bad}", "--out", str(tmp_path / "run")])
    assert f"{bad} is not a safetensors file (its header claims" in line or "not JSON" in line
    truncated = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(64)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", f"init_from={truncated}"])
    assert "is truncated or damaged" in line and "cut.safetensors" in line
    foreign = tmp_path / "hf" / "model.safetensors"
    foreign.parent.mkdir()
    save_file({"w": torch.zeros(4)}, str(foreign))
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", f"init_from={foreign.parent}"])
    assert "without vlkit's metadata" in line and "encoder.image.init" in line


def test_missing_tower_init_file(capsys, tmp_path):
    line = one_error_line(capsys, ["recipes", "show", "albef/tiny", "encoder.image.stem=patch",
                                   f"encoder.image.init={tmp_path / 'vit.pth'}"])
    assert "`encoder.image.init`: file" in line and "does not exist" in line


def test_no_machine_checks_shows_a_recipe_meant_for_elsewhere(capsys):
    line = one_error_line(capsys, ["recipes", "show", "albef/base"])
    assert "data/albef/coco.json does not exist" in line and "--no-machine-checks" in line
    assert main(["recipes", "show", "albef/base", "--no-machine-checks"]) == 0


# ------------------------------------------------------------------------------------------ command-line flags
def test_out_that_is_an_existing_file(capsys, tmp_path):
    out = write(tmp_path / "out", "x")
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(out)])
    assert f"--out {out} is an existing file" in line
    line = one_error_line(capsys, ["data", "synth", "--out", str(out)])
    assert "is an existing file" in line


def test_resume_without_a_checkpoint(capsys, tmp_path):
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run"), "--resume"])
    assert "--resume: no checkpoint in" in line
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run"), "--resume",
                                   str(tmp_path / "step_1.pt")])
    assert "no such checkpoint file" in line


def test_resume_and_overwrite_together_and_overwrite_passed_on(capsys, tmp_path, monkeypatch):
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run"), "--resume", "--overwrite"])
    assert "give one of --resume" in line
    seen = {}
    monkeypatch.setattr("vlkit.train.pretrain.run_pretraining", lambda *a, **k: seen.update(k) or {})
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}}, tmp_path / "run" / "checkpoints" / "step_00000001.pt")
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run")])
    assert "already holds a run (checkpoints/)" in line and "--overwrite" in line
    assert main(["train", "albef/tiny", "--out", str(tmp_path / "run"), "--overwrite"]) == 0
    assert seen["overwrite"] is True and seen["resume"] is False


def test_eval_checkpoint_missing_or_malformed(capsys, tmp_path):
    line = one_error_line(capsys, ["eval", "albef/tiny", "--checkpoint", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "e")])
    assert "--checkpoint: no checkpoint at" in line
    bad = write(tmp_path / "bad.safetensors", "not a safetensors file")
    line = one_error_line(capsys, ["eval", "albef/tiny", "--checkpoint", str(bad), "--out", str(tmp_path / "e")])
    assert "bad.safetensors is not a safetensors file" in line


# ------------------------------------------------------------------------------------------ interrupts, disk, bugs
def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_data_generation_ends_in_one_line_and_130(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("vlkit.data.synthetic.generate", interrupt)
    line = one_error_line(capsys, ["data", "synth", "--out", str(tmp_path / "d")], code=EXIT_INTERRUPTED,
                          prefix="interrupted (Ctrl-C) during `vlkit data`")
    assert "Traceback" not in line


def test_ctrl_c_during_evaluation_ends_in_one_line_and_130(capsys, tmp_path, monkeypatch):
    checkpoint = tmp_path / "step_00000001.pt"
    torch.save({"model": {}}, checkpoint)
    monkeypatch.setattr("vlkit.eval.checkpoint_eval.run_evaluation", interrupt)
    one_error_line(capsys, ["eval", "albef/tiny", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e")],
                   code=EXIT_INTERRUPTED, prefix="interrupted (Ctrl-C) during `vlkit eval`")


def test_ctrl_c_during_data_preparation_ends_in_one_line_and_130(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("vlkit.train.pretrain.run_pretraining", interrupt)
    one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run")], code=EXIT_INTERRUPTED,
                   prefix="interrupted (Ctrl-C) during `vlkit train`")


def test_a_full_disk_ends_in_one_line_naming_where(capsys, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vlkit.train.pretrain.run_pretraining", full)
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run")])
    assert "no space left on the device" in line and str(tmp_path / "run") in line


def test_non_finite_numbers_outside_the_trainer_end_in_one_line_and_3(capsys, tmp_path, monkeypatch):
    def diverged(*args, **kwargs):
        raise NonFiniteError("the weights of checkpoint x hold NaN values")

    monkeypatch.setattr("vlkit.train.pretrain.run_pretraining", diverged)
    line = one_error_line(capsys, ["train", "albef/tiny", "--out", str(tmp_path / "run")], code=EXIT_NONFINITE)
    assert "NaN" in line


def test_other_exceptions_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a broken invariant")

    monkeypatch.setattr("vlkit.data.synthetic.generate", bug)
    with pytest.raises(RuntimeError, match="a broken invariant"):
        main(["data", "synth", "--out", str(tmp_path / "d")])
    monkeypatch.setattr("vlkit.data.synthetic.generate", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EACCES,
                                                                                                       "denied")))
    with pytest.raises(PermissionError):
        main(["data", "synth", "--out", str(tmp_path / "d")])


def test_a_user_error_message_with_line_breaks_is_printed_on_one_line():
    assert cli._error_line(UserError("first\n  second\n")) == "error: first second"


@pytest.mark.slow
def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    """The installed entry point, not only main(): no traceback, no log line before the error."""
    overrides = json_pairs(tmp_path, annotations=False)
    proc = subprocess.run([sys.executable, "-m", "vlkit", "train", "dual/tiny", *overrides,
                           "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.json does not exist" in lines[0]
