"""The package is a house of four floors, each importing only the floors below it:

    core  <-  defs  <-  orchestration  <-  cli (and the other entry points)

`core` holds the rules and knows nothing of Dagster; `defs` wires them into assets, checks,
sensors and resources; `orchestration` runs the definitions outside `dagster dev`; the
command line and `definitions.py` are the doors. Read from the source with `ast`, every
import counted, those inside functions too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import bms_pipeline

PACKAGE = Path(bms_pipeline.__file__).parent

FLOORS = {"core": 0, "defs": 1, "orchestration": 2, "cli": 3}
"""Every subpackage has a floor; a top-level module (definitions.py, console.py...) is an
entry point on the top floor unless listed here."""
TOP = max(FLOORS.values())

FORBIDDEN = {
    "core": {"defs", "orchestration", "cli", "dagster"},
    "defs": {"orchestration", "cli"},
    "orchestration": {"cli"},
}


def _unit(module: str) -> str | None:
    """The top-level unit of a module of ours (`bms_pipeline.defs.x` -> `defs`), `dagster`
    for Dagster and its integrations, None for anything else."""
    parts = module.split(".")
    if parts[0] == "bms_pipeline":
        return parts[1] if len(parts) > 1 else "__init__"
    if parts[0] == "dagster" or parts[0].startswith("dagster_"):
        return "dagster"
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `path`, at any depth."""
    package = ".".join(("bms_pipeline", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if node.module is None or node.level:  # `from . import x` may import a module
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _arrows() -> dict[tuple[str, str], list[str]]:
    """(from unit, to unit) -> where, for every import between two units."""
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for line, module in _imports(path):
            target = _unit(module)
            if target is not None and target != source:
                arrows[(source, target)].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return arrows


def _floor(unit: str) -> int:
    if unit in FLOORS:
        return FLOORS[unit]
    if (PACKAGE / unit).is_dir():
        pytest.fail(f"bms_pipeline/{unit}/ has no floor: add it to FLOORS in {__file__}")
    return TOP


def test_the_import_reader_sees_imports_inside_functions():
    arrows = _arrows()
    # `defs.resources` imports `core.url_roots` only inside a property (fsspec is not needed
    # to load the definitions): the reader must see it, or the checks below prove nothing.
    assert any("defs/resources.py" in where for where in arrows[("defs", "core")])
    assert ("orchestration", "defs") in arrows and ("defs", "dagster") in arrows


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_no_forbidden_arrow(lower: str):
    arrows = _arrows()
    wrong = {
        f"{lower} -> {upper}": arrows[(lower, upper)]
        for upper in sorted(FORBIDDEN[lower])
        if arrows.get((lower, upper))
    }
    assert not wrong, f"imports against the house's floors: {wrong}"


def test_every_arrow_points_down():
    """A floor imports only the floors below it, so no cycle can run between floors."""
    up = {
        f"{source} -> {target}": where
        for (source, target), where in _arrows().items()
        if target != "dagster" and _floor(target) > _floor(source)
    }
    assert not up, f"imports from a lower floor to a higher one: {up}"


def test_no_cycle_between_subpackages():
    graph: dict[str, set[str]] = defaultdict(set)
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    for source, target in _arrows():
        if source in packages and target in packages:
            graph[source].add(target)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for p in sorted(packages) if (c := cycle_from(p))]
    assert not cycles, f"import cycles between subpackages: {cycles}"
