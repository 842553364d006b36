"""Subpackages import one way: io -> data/preprocess -> model -> train/evaluate/infer -> cli/server/pacs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "covidct"
# Each subpackage's stage; a module may import from its own stage or an earlier one. The top-level modules
# (errors, intended_use, html_page, png, run_dir) are shared by every stage.
STAGES = {
    "io": 0,
    "data": 1,
    "preprocess": 1,
    "model": 2,
    "train": 3,
    "evaluate": 3,
    "infer": 3,
    "export": 3,
    "cli": 4,
    "server": 4,
    "pacs": 4,  # an interface like cli and server: the PACS round trip over infer
}
SHARED = {"errors", "intended_use", "html_page", "png", "run_dir"}


def imported_units(path: Path) -> set[str]:
    """The covidct subpackages or top-level modules that ``path`` imports, at any depth of its code."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        units |= {name.split(".")[1] for name in names if name.startswith("covidct.")}
    return units


def subpackage_graph() -> dict[str, set[str]]:
    """Subpackage -> the other covidct units its modules import (the package's own re-exports left out)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            graph.setdefault(parts[0], set()).update(imported_units(path) - {parts[0]})
    return graph


def test_every_subpackage_has_a_stage():
    assert set(subpackage_graph()) == set(STAGES)


@pytest.mark.parametrize("package", sorted(STAGES))
def test_no_import_runs_up_the_flow(package):
    later = {unit for unit in subpackage_graph()[package] - SHARED if STAGES[unit] > STAGES[package]}

    assert later == set(), f"covidct.{package} (stage {STAGES[package]}) imports later stages {sorted(later)}"


def test_the_subpackages_import_each_other_without_a_cycle():
    graph = {package: units - SHARED for package, units in subpackage_graph().items()}
    visiting, done = [], set()

    def visit(package: str) -> None:
        assert package not in visiting, (
            f"import cycle: {' -> '.join([*visiting[visiting.index(package) :], package])}"
        )
        if package in done:
            return
        visiting.append(package)
        for unit in sorted(graph[package]):
            visit(unit)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)
