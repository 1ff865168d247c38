"""README's "Where each rule lives" table stays true: every home it names exists, and every
name it gives is defined there, so a newcomer following the table lands on the rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _rows() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    table = text.split("Where each rule lives:", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("rule", "---"):
            rows.append((cells[0], cells[1]))
    return rows


def _home_path(spelled: str) -> Path:
    for base in (ROOT / "bms_pipeline", ROOT):
        if (base / spelled).exists():
            return base / spelled
    raise AssertionError(f"{spelled}: no such file under bms_pipeline/ or the repository")


def _defined(path: Path) -> set[str]:
    """Top-level functions, classes and assignments; methods and fields (also as `Class.x`)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.update((f"{node.name}.{item.name}", item.name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.update((f"{node.name}.{item.target.id}", item.target.id))
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


ROWS = _rows()


def test_the_table_has_rows() -> None:
    assert len(ROWS) >= 20


@pytest.mark.parametrize(("rule", "home"), ROWS, ids=[r for r, _ in ROWS])
def test_each_home_exists_and_defines_the_names_it_gives(rule: str, home: str) -> None:
    # A home is `path` optionally followed by (`name`, `name` ...); several homes per cell.
    for match in re.finditer(r"`([\w/.]+\.py)`(?: \(([^)]*)\))?", home):
        path = _home_path(match.group(1))
        if not match.group(2) or path.suffix != ".py":
            continue
        names = re.findall(r"`([A-Za-z_][\w.]*)`", match.group(2))
        defined = _defined(path)
        for name in names:
            if name.endswith(".py") or " " in name:
                continue
            assert name in defined, f"{rule!r}: `{name}` is not defined in {match.group(1)}"
