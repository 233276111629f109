"""The package's layering, read from its own imports: the rules DESIGN.md keeps, checked so they stay kept."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cl_runner"


def imported_modules(path: Path) -> set[str]:
    """Every `cl_runner...` module that a source file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("cl_runner")}


@pytest.mark.parametrize("folder, forbidden", [
    ("losses", ("cl_runner.data",)),                   # a loss sees a batch, never a sampler or a data set
    ("data", ("cl_runner.distributed",)),              # a sampler is given its rows, never a process group
])
def test_a_layer_does_not_import_what_it_must_not_know(folder, forbidden):
    offending = {f"{path.name}: {name}" for path in (PACKAGE / folder).glob("*.py")
                 for name in imported_modules(path) if name.startswith(forbidden)}
    assert not offending


def test_the_ground_floor_imports_nothing_of_the_package_but_errors():
    for name in ("batch.py", "atomic.py", "errors.py", "interruption.py"):
        assert imported_modules(PACKAGE / name) <= {"cl_runner.errors", "cl_runner.errors.UserError"}, name


def test_the_rule_sees_an_import_when_there_is_one(tmp_path):
    source = tmp_path / "loss.py"
    source.write_text("def f():\n    from cl_runner.data.pairing import TupleSampler\n")
    assert "cl_runner.data.pairing" in imported_modules(source)
