"""The structure rules of docs/architecture.md, kept true by reading vlkit's source (ast, no imports):

- no import cycles between modules, ``TYPE_CHECKING`` imports included;
- imports point downward: ``core`` imports nothing else from vlkit, ``nn`` only ``core``, and so on up
  (:data:`ALLOWED`);
- capabilities are declared, not probed: no ``hasattr`` / ``getattr`` / ``setattr`` on vlkit's own objects
  (:data:`PROBES_ALLOWED` lists the genuine duck typing of third-party objects, each with its reason), and
  no comparison of a registry name (``cfg.type == "itm"``) outside the registry.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vlkit"

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "nn": {"core"},
    "encoders": {"core", "nn", "registry", "schema"},
    "heads": {"core", "nn", "encoders", "registry", "schema"},
    "objectives": {"core", "nn", "encoders", "heads", "registry", "schema", "dist", "vlkit"},
    "models": {"core", "nn", "encoders", "heads", "objectives"},
    "data": {"core", "registry", "schema", "vlkit"},
    "weights": {"core", "nn", "encoders"},
}
"""Package → the other vlkit packages (or top-level modules) it may import; ``vlkit`` is the package root."""

PROBES_ALLOWED: dict[str, str] = {
    "vlkit/nn/checkpointing.py": "torch._dynamo.config knobs that older torch releases lack",
    "vlkit/weights/timm_vit.py": "a timm model module's optional checkpoint_filter_fn",
    "vlkit/weights/beit_mome.py": "the structure of a timm BEiT / ViT model (blocks[0].attn.num_heads)",
    "vlkit/registry.py": "a plug-in class: its optional `Config` and its `__module__`",
    "vlkit/data/tokens.py": "a Hugging Face tokenizer's `<name>_token_id` attributes",
    "vlkit/schema.py": "typing objects' `__name__`, and dataclass fields read by the generic to_dict",
}
"""Files allowed to call hasattr / getattr / setattr, and on what (never a vlkit object in control flow)."""


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vlkit"


def import_graph() -> dict[str, set[str]]:
    """Module → the vlkit modules it imports (anywhere in the file, ``TYPE_CHECKING`` blocks included)."""
    mods = modules()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            edges[module] |= {t for t in targets if t in mods and t != module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_type_checking_imports_included():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_downward(layer: str):
    broken = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                    if package(module) == layer for target in targets
                    if package(target) != layer and package(target) not in ALLOWED[layer])
    assert broken == [], f"{layer}/ may import only {sorted(ALLOWED[layer])} (docs/architecture.md)"


def test_the_rules_catch_a_violation():
    """The checks above can fail: a cycle and an upward import in a made-up graph are found."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert package("vlkit.core.step") == "core" and package("vlkit.registry") == "registry"


def probes(path: Path) -> list[str]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "hasattr", "getattr", "setattr"):
            calls.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return calls


def test_no_capability_probes_on_vlkit_objects():
    found = [call for path in sorted(PACKAGE.rglob("*.py"))
             if str(path.relative_to(PACKAGE.parent)) not in PROBES_ALLOWED for call in probes(path)]
    assert found == [], "declare the capability (a config flag, a method of the base class, isinstance) instead"
    for allowed in PROBES_ALLOWED:  # the allow-list names real files that still need it
        assert probes(PACKAGE.parent / allowed), f"{allowed} no longer probes anything: drop it from the list"


def test_no_registry_name_comparisons_outside_the_registry():
    """``x.type == "name"`` / ``x.type in (...)`` steer by a registry name; ``device.type`` is torch's."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            for side in sides:
                if isinstance(side, ast.Attribute) and side.attr == "type" and "device" not in ast.unparse(side):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "dispatch on the config or module class (isinstance) or a declared flag"


def test_core_is_a_leaf_that_imports_only_the_standard_library_and_torch():
    allowed_roots = {"__future__", "collections", "dataclasses", "difflib", "os", "pathlib", "typing", "torch",
                     "vlkit", "timm"}
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"
                if name.startswith("vlkit"):
                    assert name.startswith("vlkit.core"), f"{path.name} imports {name}"
