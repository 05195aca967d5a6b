"""The import direction of the folders (DESIGN.md): nothing imports upward.

Also: every module reaches the project's folders through the ``stokesflow``
namespace (never the bare folder names, which belong to other PyPI packages),
and every module declares ``__all__`` as a list or tuple of string literals.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "backends", "nn_init", "lm_solver", "clusters")
ALLOWED = {
    "lm_solver": set(),
    "clusters": set(),
    "backends": {"lm_solver"},
    "nn_init": {"backends", "lm_solver"},
    "orchestrator": {"backends", "nn_init", "lm_solver", "clusters"},
}


def _imported_modules(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def imported_packages(path: Path) -> set[str]:
    """The project folders that ``path`` imports (through ``stokesflow.<folder>``)."""
    out = set()
    for name in _imported_modules(ast.parse(path.read_text(), str(path))):
        parts = name.split(".")
        if parts[0] == "stokesflow" and len(parts) > 1:
            out.add(parts[1])
    return out & set(PACKAGES)


def bare_imports(path: Path) -> set[str]:
    """Imports of a project folder by its bare top-level name (``import backends``)."""
    names = _imported_modules(ast.parse(path.read_text(), str(path)))
    return {n for n in names if n.split(".")[0] in PACKAGES}


def declared_all(path: Path) -> list[str] | None:
    """The literal ``__all__`` of a module, or None when it has none."""
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            value = ast.literal_eval(node.value)
            assert isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), path
            return list(value)
    return None


def test_checker_sees_namespaced_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import stokesflow.orchestrator.run\nfrom stokesflow.backends import get_backend\nimport numpy\n")
    assert imported_packages(probe) == {"orchestrator", "backends"}
    probe.write_text("from backends import get_backend\n")
    assert bare_imports(probe) == {"backends"}
    probe.write_text("x = 1\n# __all__ = ['x']\ns = '__all__'\n")
    assert declared_all(probe) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    for path in (REPO / package).rglob("*.py"):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}, against the layer order"


def test_no_bare_folder_imports():
    files = [p for pkg in (*PACKAGES, "tests", "benchmarks") for p in (REPO / pkg).rglob("*.py")]
    bad = {str(p.relative_to(REPO)): sorted(bare_imports(p)) for p in files if bare_imports(p)}
    assert not bad, f"import through stokesflow.<folder>, not the bare names: {bad}"


def test_every_module_declares_all():
    missing, unknown = [], {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            names = declared_all(path)
            if names is None:
                missing.append(str(path.relative_to(REPO)))
                continue
            tree = ast.parse(path.read_text())
            defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            for node in ast.walk(tree):
                if isinstance(node, (ast.Name,)) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
            lazy = "__getattr__" in defined  # a package's lazy exports
            absent = [n for n in names if n not in defined] if not lazy else []
            if absent:
                unknown[str(path.relative_to(REPO))] = absent
    assert not missing, f"modules without __all__: {missing}"
    assert not unknown, f"__all__ names nothing of that name is defined: {unknown}"
