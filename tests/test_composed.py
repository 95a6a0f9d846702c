"""Composed-query retrieval (ALIGN): the query arithmetic, ranking, the contact sheet and `vlkit retrieve`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlkit.eval.composed import compose, contact_sheet, rank


def test_compose_normalizes_each_part_then_the_sum() -> None:
    image, plus, minus = torch.tensor([3.0, 0, 0]), torch.tensor([0.0, 2.0, 0]), torch.tensor([0.0, 0, 5.0])
    query = compose(image, [plus], [minus])
    torch.testing.assert_close(query, F.normalize(torch.tensor([1.0, 1.0, -1.0]), dim=0))
    torch.testing.assert_close(compose(None, [plus]), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="needs an image or a text"):
        compose(None)


def test_rank_orders_by_cosine_and_caps_k() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    indices, scores = rank(gallery, F.normalize(torch.tensor([0.2, 1.0]), dim=0), 5)
    assert indices == [1, 2, 0] and scores[0] > scores[1] > scores[2]


def test_contact_sheet_lays_out_query_and_results() -> None:
    picture = Image.new("RGB", (20, 20), (200, 0, 0))
    sheet = contact_sheet(picture, "query", [(picture, "#1")] * 10, columns=4, thumb=32)
    assert sheet.size == (4 * 38 + 6, 4 * (32 + 16 + 6) + 6)  # query row + 3 result rows


def test_retrieve_command_writes_sheet_and_results(tmp_path: Path, small_data: list[str]) -> None:
    from vlkit.cli import EXIT_RECIPE_ERROR, main
    from vlkit.recipe import load_recipe
    from vlkit.train.pretrain import run_pretraining

    args = [*small_data, f"data.source.root={tmp_path / 'data'}", "train.batch_size=8", "train.steps=2",
            "eval.batch_size=8", "eval.k_test=4"]
    run_pretraining(load_recipe("dual/tiny", args), tmp_path / "run", progress=False)
    out = tmp_path / "sheet.png"
    assert main(["retrieve", "dual/tiny", *args, "--checkpoint", str(tmp_path / "run"), "--image-index", "2",
                 "--top", "5", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["rank"] for r in results["results"]] == [1, 2, 3, 4, 5]
    assert results["results"][0]["image"] == results["query_image"]  # an image is its own nearest neighbour
    assert results["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert Image.open(out).size[0] > 0
    assert main(["retrieve", "dual/tiny", *args, "--checkpoint", str(tmp_path / "run"), "--text", "a red circle",
                 "--minus", "blue", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["retrieve", "dual/tiny", *args, "--checkpoint", str(tmp_path / "run"),
                 "--out", str(tmp_path / "none.png")]) == EXIT_RECIPE_ERROR
