"""A byte-level scan of output files for the slide's identifiers.

Header checks only see the attributes one thinks of; the bytes also cover private tags,
ICC profiles, pixel data and anything a library adds. SLIDE_ID and SLIDE_NAME (which can
carry a patient name), and any other MIRAX property outside the allow-list, must not
appear anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# MIRAX properties that may pass into DICOM headers (through wsidicomizer's MIRAX
# metadata or ours). Everything else, SLIDE_ID and SLIDE_NAME above all, stays out.
ALLOWED_MIRAX_PROPERTIES = frozenset(
    {
        "mirax.GENERAL.OBJECTIVE_MAGNIFICATION",
        "mirax.GENERAL.SCANNER_HARDWARE_VERSION",
        "mirax.GENERAL.SCANNER_SOFTWARE_VERSION",
        "mirax.GENERAL.SCANNER_HARDWARE_ID",
        "openslide.mpp-x",
        "openslide.mpp-y",
        "openslide.objective-power",
        "openslide.bounds-x",
        "openslide.bounds-y",
        "openslide.bounds-width",
        "openslide.bounds-height",
        "openslide.background-color",
    }
)

IDENTIFYING_PROPERTIES = {
    "SLIDE_ID": "mirax.GENERAL.SLIDE_ID",
    "SLIDE_NAME": "mirax.GENERAL.SLIDE_NAME",
}
"""Always scanned for, whatever they look like."""
_CHUNK = 16 << 20


@dataclass(frozen=True)
class IdentifierHit:
    file: Path
    name: str
    offset: int


def identifiers_of(properties: Mapping[str, str]) -> dict[str, str]:
    """What must not appear in any output byte: SLIDE_ID and SLIDE_NAME, and the value of
    every other `mirax.GENERAL.*` property outside the allow-list that could name something
    (6 characters or more, with a letter; numbers and short codes would match by chance)."""
    found = {}
    for name, key in IDENTIFYING_PROPERTIES.items():
        value = (properties.get(key) or "").strip()
        if len(value) >= 4:
            found[name] = value
    for key, raw in properties.items():
        value = (raw or "").strip()
        if (
            key.startswith("mirax.GENERAL.")
            and key not in ALLOWED_MIRAX_PROPERTIES
            and len(value) >= 6
            and any(c.isalpha() for c in value)
        ):
            found.setdefault(key.removeprefix("mirax.GENERAL."), value)
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
