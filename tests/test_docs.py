"""The README and the user guide (docs/*.md) point at things that exist.

- every relative link resolves to a file in the checkout, and a ``#anchor`` to a heading of that file;
- every shipped recipe they name (``albef/tiny``, ``recipes/vlmo/base.yaml``, ``finetune/albef/retrieval_coco``,
  brace lists and ``*`` patterns alike) exists, and so does every ablation grid ``recipes/ablations/*.yaml``;
- every test they cite as ``test_file.py::test_name`` exists;
- the copy-paste recipes of docs/data.md (YAML blocks whose first line is ``# my/<file>.yaml``) validate;
- no ``<<MEASURE`` placeholder is left: the lead engineer fills those with measured figures, and until then
  this test fails on purpose, so that a placeholder never ships.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from pathlib import Path

import pytest

from vlkit.core.errors import RecipeError
from vlkit.recipe import find_recipe, resolve, shipped_recipe_names, shipped_recipes_dir

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MEASURED_PAGES = [*PAGES, ROOT / "benchmarks" / "RESULTS.md"]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RECIPE = re.compile(r"(?<![\w/.$<-])(?:(?:\.\./)+)?(?:recipes/)?((?:albef|vlmo|dual|finetune)/[\w{},*./-]*[\w}*]"
                    r"|ablations/[\w{},*.-]*[\w}*])")
CITED_TEST = re.compile(r"(test_\w+\.py)?::(test_\w+)")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _without_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def expand_braces(text: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", text)
    if match is None:
        return [text]
    return [expanded for option in match.group(1).split(",")
            for expanded in expand_braces(text[:match.start()] + option + text[match.end():])]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{fragment} in {file.name}")
    assert not broken, f"{page.name}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_recipes_exist(page: Path) -> None:
    names = shipped_recipe_names()
    missing = []
    for reference in sorted(set(RECIPE.findall(page.read_text(encoding="utf-8")))):
        for name in expand_braces(reference):
            name = name.removesuffix(".yaml")
            if name.startswith("ablations/"):
                if not list(shipped_recipes_dir().glob(f"{name}.yaml")):
                    missing.append(f"{reference} (no grid recipes/{name}.yaml)")
            elif "*" in name:
                if not fnmatch.filter(names, name):
                    missing.append(f"{reference} (the pattern {name} matches no shipped recipe)")
            else:
                try:
                    find_recipe(name)
                except RecipeError as err:
                    missing.append(f"{reference}: {err}")
    assert not missing, f"{page.name} names recipes that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_cited_tests_exist(page: Path) -> None:
    defined = {p.name: set(re.findall(r"^\s*def (test_\w+)", p.read_text(encoding="utf-8"), flags=re.M))
               for p in (ROOT / "tests").glob("test_*.py")}
    missing = []
    for line in page.read_text(encoding="utf-8").splitlines():
        current = None  # `::test_x` continues the file named last on the same line
        for file, name in CITED_TEST.findall(line):
            current = file or current
            if current is None or current not in defined:
                missing.append(f"{current}::{name} (no file tests/{current})")
            elif name not in defined[current]:
                missing.append(f"{current}::{name}")
    assert not missing, f"{page.name} cites tests that do not exist:\n" + "\n".join(missing)


def test_the_copy_paste_recipes_of_the_data_guide_validate(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if b.startswith("# my/")]
    assert blocks, "docs/data.md has no copy-paste recipe (a ```yaml block starting with `# my/<file>.yaml`)"
    (tmp_path / "recipes").symlink_to(shipped_recipes_dir())  # as in a clone, for bases given as paths
    for block in blocks:
        path = tmp_path / block.splitlines()[0].removeprefix("#").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block, encoding="utf-8")
        recipe = resolve(path).recipe  # validated as `vlkit recipes show --no-machine-checks` does
        assert recipe.data is not None and recipe.data.source.type == "json_pairs", path.name


def test_the_brace_and_anchor_helpers() -> None:
    assert expand_braces("finetune/{albef,vlmo}/{ve,vqa}_tiny") == [
        "finetune/albef/ve_tiny", "finetune/albef/vqa_tiny", "finetune/vlmo/ve_tiny", "finetune/vlmo/vqa_tiny"]
    assert anchor("The papers' downstream recipes") == "the-papers-downstream-recipes"
    assert anchor("Stage-wise pre-training (VLMo)") == "stage-wise-pre-training-vlmo"
    assert anchor("The `train` section") == "the-train-section"
    found = list(itertools.chain.from_iterable(RECIPE.findall(t) for t in (
        "vlkit train albef/tiny --out runs/albef-tiny", "`recipes/vlmo/base.yaml`", "data/albef/coco.json",
        "base: ../recipes/albef/tiny_real.yaml", "`finetune/albef/retrieval_coco`.")))
    assert found == ["albef/tiny", "vlmo/base.yaml", "albef/tiny_real.yaml", "finetune/albef/retrieval_coco"]


@pytest.mark.parametrize("page", MEASURED_PAGES, ids=_ids(MEASURED_PAGES))
def test_no_measurement_placeholder_is_left(page: Path) -> None:
    left = [f"line {n}: {line.strip()[:120]}" for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if "<<MEASURE" in line]
    assert not left, (
        f"{page.relative_to(ROOT)} still holds {len(left)} `<<MEASURE: ...>>` placeholder(s). Expected until the lead "
        "engineer has measured the figures (the README's headline runs, the test-suite durations): replace each "
        "with the measured value, and record date, machine and command in benchmarks/RESULTS.md. This check keeps a "
        "placeholder from shipping.\n" + "\n".join(left))
