"""The import direction of the folders (DESIGN.md): nothing imports upward."""

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


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    for path in (REPO / package).rglob("*.py"):
        bad = imported_packages(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}, against the layer order"


def test_every_module_declares_all():
    missing = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "__all__" not in path.read_text():
                missing.append(str(path.relative_to(REPO)))
    assert not missing, f"modules without __all__: {missing}"
