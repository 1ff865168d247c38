"""A byte-level scan of output files for the slide's identifiers.

Header checks only see the attributes one thinks of; the bytes also cover private tags,
ICC profiles, pixel data and anything a library adds. SLIDE_ID and SLIDE_NAME (which can
carry a patient name) must not appear anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

IDENTIFYING_PROPERTIES = {
    "SLIDE_ID": "mirax.GENERAL.SLIDE_ID",
    "SLIDE_NAME": "mirax.GENERAL.SLIDE_NAME",
}
_CHUNK = 16 << 20


@dataclass(frozen=True)
class IdentifierHit:
    file: Path
    name: str
    offset: int


def identifiers_of(properties: Mapping[str, str]) -> dict[str, str]:
    """The identifying values of a slide, from its OpenSlide properties (blank ones skipped)."""
    found = {}
    for name, key in IDENTIFYING_PROPERTIES.items():
        value = (properties.get(key) or "").strip()
        if len(value) >= 4:  # shorter values would match by chance
            found[name] = value
    return found


def scan_files(files: Iterable[Path], identifiers: Mapping[str, str]) -> list[IdentifierHit]:
    """Every occurrence (first per file and identifier) of any identifier in any file."""
    needles = {name: value.encode("utf-8") for name, value in identifiers.items()}
    if not needles:
        return []
    overlap = max(len(n) for n in needles.values()) - 1
    hits = []
    for path in files:
        seen: set[str] = set()
        with open(path, "rb") as handle:
            tail = b""
            position = 0
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                for name, needle in needles.items():
                    at = window.find(needle)
                    if name not in seen and at >= 0:
                        seen.add(name)
                        hits.append(IdentifierHit(Path(path), name, position - len(tail) + at))
                position += len(chunk)
                tail = window[-overlap:] if overlap else b""
    return hits
