"""For the privacy tests: names planted where real 3DHISTECH slides carry text, and a search
of every byte a run left (files raw, SQLite cells raw and inflated) that needs no code of the
audit under test."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

PLANTED = {
    "SLIDE_BARCODE": "Zwetschgenbaum Adelheid",
    "PROJECT_NAME": "Quirinus Obermaier",
    "SLIDE_LABEL": "Waltraud Kniebeuger",
    "SLIDE_QUALITY": "Hildegunde Prachtl",
    "SLIDE_COMMENT": "Bartholomae Ziegenspeck",
    "COMMENT": "Eusebius Wurzelsepp",
}


def plant_properties(root: Path, values: dict[str, str] = PLANTED) -> None:
    """Each slide's Slidedat.ini [GENERAL] gets `values` (keys other than SLIDE_ID: the slide
    stays what it was)."""
    for ini in sorted((root / "raw" / "slides").glob("*/Slidedat.ini")):
        text = ini.read_text(encoding="utf-8-sig")
        lines = "".join(f"{k} = {v}\n" for k, v in values.items())
        ini.write_text(text.replace("[GENERAL]\n", f"[GENERAL]\n{lines}", 1), encoding="utf-8-sig")


def places_holding(folders: list[Path], value: str) -> list[str]:
    """Every file under `folders` whose bytes hold `value`, and every SQLite cell (compressed
    by zlib or not) that does."""
    needle = value.encode()
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if needle in data:
                found.append(str(path))
            if data.startswith(b"SQLite format 3\x00"):
                found += [f"{path}: {cell}" for cell in _inflated_cells_holding(path, needle)]
    return found


def _inflated_cells_holding(path: Path, needle: bytes) -> list[str]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if isinstance(cell, bytes):
                        try:
                            if needle in zlib.decompress(cell):
                                found.append(table)
                        except zlib.error:
                            pass
    finally:
        connection.close()
    return found
