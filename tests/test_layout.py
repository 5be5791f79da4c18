"""The package's shape (issue 17, item 6): no import cycles, no stage importing a later one, small modules.

DESIGN.md's data path runs one way, convert → optimize → runtime → serve; a stage imports only from the
stages before it and from the shared vocabulary. These checks read the source with `ast` (imports at module
level and inside functions alike, since a lazy import is still a dependency), so they cost no import time
and catch a violation before it becomes a cycle at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "inferd"

# DESIGN.md's data path, left to right: a module may import its own stage and earlier ones only.
# Export sits before runtime: it branches off the package (DESIGN.md's diagram) and needs no runtime, while the
# runtime's Core ML backend compiles a package by exporting it, as Core ML itself compiles an .mlpackage.
# The longest matching prefix decides a module's stage; `inferd` alone is the package's __init__.
STAGES: dict[str, int] = {
    "inferd.version": 0, "inferd.errors": 0, "inferd.types": 0, "inferd.manifest": 0, "inferd.package": 0,
    "inferd.tolerance": 0, "inferd.io": 0,
    "inferd.convert": 1,
    "inferd.optimize": 2,
    "inferd.export": 3,
    "inferd.runtime": 4,
    "inferd.serve": 5, "inferd.bench": 5, "inferd.deploy": 5,
    "inferd.cli": 6, "inferd.zoo": 6, "inferd.__main__": 6, "inferd": 6,
}
STAGE_NAMES = ["shared vocabulary", "convert", "optimize", "export", "runtime", "serve/bench/deploy", "cli/zoo"]

MAX_LINES = 400


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module under `root` by dotted name; a package's __init__ is the module named after the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The inferd modules `name` imports anywhere in its body, relative imports resolved.

    `from package import name` is an import of the submodule when `name` is one, else of the package itself.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    yield f"{source}.{alias.name}"
                elif source in modules:
                    yield source


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _imports(name, path, modules) if target != name)
    return graph


def _stage(module: str) -> int:
    prefix = max((p for p in STAGES if module == p or module.startswith(p + ".")), key=len)
    return STAGES[prefix]


def test_the_import_graph_is_read():
    """The parser sees imports at module level, inside functions and relative ones; else the checks below pass vacuously."""
    graph = _graph()
    assert graph.has_edge("inferd.runtime.compiled", "inferd.errors")  # module level
    assert graph.has_edge("inferd", "inferd.runtime")  # `from package import name`, inside a function
    assert graph.has_edge("inferd", "inferd.io")  # `import package`, inside a function
    assert graph.has_edge("inferd.export.coreml", "inferd.export.coreml_compress")  # `from package import module`
    assert graph.number_of_edges() > 200


def test_relative_imports_resolve(tmp_path: Path):
    """inferd has no relative imports today; one added later must not slip past the checks."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__", "top", "sub/__init__", "sub/sibling"):
        (package / f"{name}.py").write_text("")
    (package / "sub" / "mod.py").write_text(
        "from . import sibling\nfrom .sibling import thing\nfrom .. import top\nfrom ..top import name\n"
        "def later():\n    from .. import sub\n")
    modules = _modules(package)
    found = set(_imports("pkg.sub.mod", package / "sub" / "mod.py", modules))
    assert found == {"pkg.sub.sibling", "pkg.top", "pkg.sub"}
    assert set(_imports("pkg.sub", package / "sub" / "__init__.py", modules)) == set()


def test_no_import_cycles():
    cycles = [sorted(component) for component in nx.strongly_connected_components(_graph()) if len(component) > 1]
    assert not cycles, "modules that import each other (directly or around a loop):\n" + "\n".join(
        ", ".join(component) for component in cycles)


def test_no_stage_imports_a_later_stage():
    upward = [f"{source} ({STAGE_NAMES[_stage(source)]}) imports {target} ({STAGE_NAMES[_stage(target)]})"
              for source, target in _graph().edges if _stage(target) > _stage(source)]
    assert not upward, "imports against the data path:\n" + "\n".join(sorted(upward))


def test_every_stage_is_in_the_table():
    """A new top-level module or folder gets a stage on purpose, not by falling back to the package's own."""
    unplaced = [name for name in _modules() if name != "inferd" and
                max((p for p in STAGES if name == p or name.startswith(p + ".")), key=len) == "inferd"]
    assert not unplaced, f"modules without a stage in STAGES: {unplaced}"


def test_modules_are_small():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams): {long}"
