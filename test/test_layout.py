"""The package's layout shows its stages, and no module imports from a stage above its own.

builder -> manifest -> runtime -> node / bag / cli: a robot installs the runtime and the node without the builder's
stack, and a change in a later stage can never break an earlier one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "rk_siglip_ros"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
# Each stage's rank: a module may import its own stage and stages of a lower rank only.
STAGES = {
    "errors": 0, "atomic_file": 0,
    "manifest": 1,
    "runtime": 2, "messages": 2, "model_identity": 2,
    "text": 3, "measure": 3,
    "builder": 4, "bag": 4, "node": 4,
    "fleet": 5,  # many bags: builds on bag
    "cli": 6,
}


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports(path: Path) -> set[str]:
    """Every rk_siglip_ros module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != PACKAGE else [f"{PACKAGE}.{a.name}" for a in node.names]
            found.update(name for name in names if name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE_DIR)


def test_every_module_belongs_to_a_known_stage():
    stages = {stage_of(".".join(p.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)) for p in modules()}
    assert stages <= set(STAGES), sorted(stages - set(STAGES))


def test_imports_only_go_down_the_stages():
    upward = []
    for path in modules():
        module = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        own = stage_of(module)
        for imported in package_imports(path):
            target = stage_of(imported)
            if target != own and STAGES[target] >= STAGES[own]:
                upward.append(f"{module} -> {imported}")
    assert upward == []


def test_relative_imports_are_not_used():
    """Absolute imports keep every module's dependencies greppable by stage."""
    relative = [str(p.relative_to(PACKAGE_DIR)) for p in modules()
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == []


@pytest.mark.parametrize("dev_only", ["builder/reuse.py", "runtime/backends/faults.py", "backends/faults.py"])
def test_developer_only_code_is_not_installed(dev_only):
    assert not (PACKAGE_DIR / dev_only).exists()
