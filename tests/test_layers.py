"""Dependencies point one way (docs/ARCHITECTURE.md), read from the source with ``ast``.

    eamstcn (base) <- export <- bench
    eamstcn (base) <- runtime <- bench

The base layer (network, data, training, metrics, ops, the reference loop) knows nothing
of the runtime, the exporter or the bench; the exporter and the runtime know nothing of
each other; only the bench sees all. The runtime and the bench import the network and
training code only inside functions (their torch paths), so the runtime-only install
(no timm) can import them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"eamstcn": "eamstcn", "export": "eamstcn.export", "runtime": "eamstcn.runtime", "bench": "eamstcn.bench"}
#: layer -> the layers it may import.
ALLOWED = {
    "eamstcn": {"eamstcn"},
    "export": {"eamstcn", "export"},
    "runtime": {"eamstcn", "runtime"},
    "bench": {"eamstcn", "export", "runtime", "bench"},
}
#: Base modules that pull in timm and the training libraries: lazily only, above the base.
HEAVY = ("eamstcn.network", "eamstcn.training")


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to, None outside the project."""
    parts = module.split(".")
    if parts[0] != "eamstcn":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ("export", "runtime", "bench") else "eamstcn"


def modules() -> list[tuple[str, Path]]:
    """(dotted name, file) of every module of the four packages."""
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            found.append((".".join([package, *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]])), path))
    return found


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement of the file;
    ``from a import b`` yields ``a.b`` (b may be a submodule), relative names resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.extend((f"{base}.{alias.name}", top) for alias in node.names)
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def test_the_scan_sees_every_package() -> None:
    layers = {layer_of(name) for name, _ in modules()}
    assert layers == set(ALLOWED)
    assert ("eamstcn.runtime.session", ROOT / "runtime" / "session.py") in modules()


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_one_way(layer: str) -> None:
    wrong = [
        f"{name} imports {target}"
        for name, path in modules()
        if layer_of(name) == layer
        for target, _ in imports(name, path)
        if layer_of(target) not in (None, *ALLOWED[layer])
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("layer", ["runtime", "bench"])
def test_network_and_training_are_imported_lazily(layer: str) -> None:
    eager = [
        f"{name} imports {target} at module level"
        for name, path in modules()
        if layer_of(name) == layer
        for target, top in imports(name, path)
        if top and target.startswith(HEAVY)
    ]
    assert not eager, "\n".join(eager)


def test_a_wrong_import_is_seen(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("import os\nfrom eamstcn.runtime import session\n\ndef f():\n    from eamstcn.network import EamStcn\n")
    assert imports("eamstcn.probe", source) == [("os", True), ("eamstcn.runtime.session", True), ("eamstcn.network.EamStcn", False)]
    assert layer_of("eamstcn.runtime.session") == "runtime" and layer_of("eamstcn.ops") == "eamstcn" and layer_of("numpy") is None
