"""The package's shape, checked from its source (docs/architecture.md):

* imports point down the layers ``cli > export > engines > validation > runtime > manifest/report > models >
  errors/fileio/images``, and there is no import cycle, counting imports inside functions;
* imports of the package's own modules inside functions are only for deferring something heavy or optional,
  and say so (a ``deferred:`` comment on the import or heading its block of imports);
* click only in ``cli/``; no package code knows about the developers' ``../shared`` folder;
* every exception class the package defines derives from ``LiptExportError``;
* no test imports another test file.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lipt_export"

# Lower number = lower layer; a module may import its own layer and anything below it.
LAYERS = {
    "lipt_export._version": 0, "lipt_export.errors": 0, "lipt_export.fileio": 0, "lipt_export.images": 0,
    "lipt_export.catalog": 0, "lipt_export.tiling": 0,
    "lipt_export.models": 1,
    "lipt_export.manifest": 2, "lipt_export.report": 2,
    "lipt_export.runtime": 3,
    "lipt_export.validation": 4,
    "lipt_export.engines": 5,
    "lipt_export.export": 6,
    "lipt_export.cli": 7,
    "lipt_export": 8,  # the package facade (lipt_export.load_runner)
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in PKG.rglob("*.py")}


def layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str) -> List[Tuple[str, int, bool]]:
    """(imported package module, line, inside a function) for every import of the package's own modules."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    out: List[Tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names
                           if a.name.startswith("lipt_export"))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", child)
                if target.startswith("lipt_export"):
                    for a in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{target}.{a.name}"
                        out.append((sub if sub in MODULES else target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(t, line, fn) for t, line, fn in out if t in MODULES]


GRAPH = {mod: imports_of(mod) for mod in MODULES}


def test_no_import_cycles():
    edges = {m: {t for t, _, _ in deps if t != m} for m, deps in GRAPH.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers():
    upward = [f"{m}:{line} imports {t}" for m, deps in GRAPH.items() for t, line, _ in deps
              if layer(t) > layer(m)]
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_function_level_imports_of_own_modules_say_why():
    def reason(lines, line: int) -> str:
        """The import line and the comment heading its block of imports."""
        k = line - 1
        text = lines[k]
        while k > 0 and lines[k - 1].strip().startswith(("from ", "import ", "#")):
            k -= 1
            text += " " + lines[k]
            if lines[k].strip().startswith("#"):
                break
        return text

    bad = []
    for m, deps in GRAPH.items():
        lines = MODULES[m].read_text().splitlines()
        for t, line, in_function in deps:
            if in_function and "deferred:" not in reason(lines, line):
                bad.append(f"{m}:{line} imports {t} inside a function without a '# deferred: reason'")
    assert not bad, "\n".join(bad)


def test_click_only_in_cli_and_no_shared_folder_in_package_code():
    click_users, shared_users = [], []
    for m, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        uses_click = any(isinstance(n, ast.Import) and any(a.name.split(".")[0] == "click" for a in n.names)
                         or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "click"
                         for n in ast.walk(tree))
        if uses_click and not m.startswith("lipt_export.cli"):
            click_users.append(m)
        if "../shared" in text or "shared_dir" in text or "calib_urban100" in text:
            shared_users.append(m)
    assert not click_users, f"click outside cli/: {click_users}"
    assert not shared_users, f"package code that knows about ../shared: {shared_users}"


def test_every_exception_class_derives_from_the_project_base():
    from lipt_export.errors import LiptExportError

    strays = []
    # __main__ would run the CLI; Triton's model files import what only exists inside a Triton server
    server_side = "lipt_export.engines.triton_models."
    for m in sorted(m for m in MODULES if not m.endswith("__main__") and not m.startswith(server_side)):
        module = importlib.import_module(m)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == m
                    and not issubclass(obj, LiptExportError)):
                strays.append(f"{m}.{name}")
    assert not strays, f"exception classes not deriving from LiptExportError: {strays}"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("*.py")), ids=lambda p: p.name)
def test_tests_do_not_import_test_files(path):
    tree = ast.parse(path.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[-1].startswith("test_") or n.startswith("conftest")]
