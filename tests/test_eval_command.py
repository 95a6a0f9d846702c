"""`vlkit eval`: a checkpoint evaluated with its recipe reproduces the end-of-training metrics; a
checkpoint that does not fit the recipe is refused; ALBEF's recall rules against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlkit.cli import EXIT_RECIPE_ERROR, main
from vlkit.eval.retrieval import recall_metrics


def _args(tmp_path: Path, small_data: list[str]) -> list[str]:
    return [*small_data, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=3",
            "train.warmup_steps=1", "eval.batch_size=8", "eval.k_test=4", "train.cpu_threads=1"]


def test_eval_reproduces_the_final_metrics_of_training(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       small_data: list[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "albef/tiny", *_args(tmp_path, small_data), "--out", str(run), "--no-progress"]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    assert "| recipe | `albef/tiny` |" in (run / "report.md").read_text()  # as named on the command line
    assert main(["eval", "albef/tiny", *_args(tmp_path, small_data), "--checkpoint", str(run),
                 "--out", str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["step"] == 3 and evaluated["checkpoint"].endswith(".pt")
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "n_images", "n_texts",
                "swap_acc_itm", "itc_r_mean"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-9), key
    assert (tmp_path / "ev" / "recipe.yaml").is_file()
    assert "txt_r1" in capsys.readouterr().out

    zero_shot = ["eval", "albef/tiny", *_args(tmp_path, small_data), "task={type: zeroshot, attribute: shape}",
                 "--checkpoint", str(run), "--out", str(tmp_path / "zs")]
    assert main(zero_shot) == 0
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert zs["n_classes"] == 5 and 0 < zs["n_images"] <= 8 and 0 <= zs["top1"] <= 100 and zs["step"] == 3

    other = ["eval", "vlmo/tiny", *_args(tmp_path, small_data), "--checkpoint", str(run),
             "--out", str(tmp_path / "bad")]
    assert main(other) == EXIT_RECIPE_ERROR
    assert "does not fit the recipe's model" in capsys.readouterr().err
    missing = ["eval", "albef/tiny", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
    assert main(missing) == EXIT_RECIPE_ERROR


@pytest.mark.parametrize("seed", range(5))
def test_recall_metrics_match_a_direct_computation(seed: int, direct_recalls) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=40)  # 1 to 5 captions per image
    img2txt, txt2img = [], []
    for image, count in enumerate(counts):
        img2txt.append(list(range(len(txt2img), len(txt2img) + count)))
        txt2img.extend([image] * count)
    i2t = rng.normal(size=(len(img2txt), len(txt2img)))
    for image, captions in enumerate(img2txt):  # make the true captions likelier to rank high
        i2t[image, captions] += rng.uniform(0, 3)
    t2i = i2t.T + rng.normal(0, 0.5, size=i2t.T.shape)  # not just the transpose
    got = recall_metrics(torch.from_numpy(i2t), torch.from_numpy(t2i), img2txt, txt2img)
    expected = direct_recalls(i2t, t2i, img2txt, txt2img)
    assert 0 < expected["txt_r1"] < 100 and 0 < expected["img_r1"] < 100  # the case is not degenerate
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
