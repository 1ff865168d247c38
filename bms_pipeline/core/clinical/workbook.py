"""An XLSX workbook read safely: its unpacked size bounded, its cells at their Excel places.

calamine (through fastexcel) reads the cells fast, but three things it cannot tell:

- how much a workbook unpacks to before it does so: a 3 MB zip can declare 3 GiB of XML
  and calamine then holds it all in memory. `open_workbook` sums the sizes the zip members
  declare and refuses a workbook above a limit before anything is decompressed; the sheet
  XML read in full here is checked by zipfile against its declared size and CRC.
- where a sheet starts: calamine's grid starts at the first cell holding a value, so a blank
  first row or column would shift every row and column number a message names.
  `SheetXml.origin` finds the first row and column that hold a value in the sheet XML.
- whether a cell is a number or text: calamine renders both as the same string (``1.234``).
  A numeric cell is unambiguous; a text cell ``1.234`` in a German sheet may be 1234.
  `SheetXml.text_cells` looks the cells up in the XML.

Errors are raised ``from None``: their message names the file and the cause, and a run's
summary shows the innermost error of a chain, which would be the bare cause.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from bms_pipeline.core.clinical.patients import ClinicalDataError

MAX_UNPACKED_BYTES = 512 * 2**20
"""What a lab workbook may unpack to (the zip members' declared sizes, summed). A synthetic
workbook of the real sheet's 257 patients unpacks to 0.2 MiB, one of 100,000 patients to
66 MiB; 512 MiB leaves room while keeping memory bounded."""

_REF = re.compile(rb"([A-Z]{1,3})([0-9]+)")
# A cell element that holds something (not self-closing); r may follow other attributes.
_VALUED_CELL = rb'<(?:\w+:)?c\b[^>]*?\br="([A-Z]{1,3})([0-9]+)"[^>/]*>'
_VALUED_CELL_RE = re.compile(_VALUED_CELL)
_TEXT_TYPE = re.compile(rb'\bt="(?:s|inlineStr|str)"')


def column_letter(position: int) -> str:
    """0-based column position -> Excel letters (0 -> A, 26 -> AA)."""
    letters = ""
    position += 1
    while position:
        position, rest = divmod(position - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def column_position(letters: str) -> int:
    """Excel letters -> 0-based column position."""
    position = 0
    for char in letters:
        position = position * 26 + ord(char) - ord("A") + 1
    return position - 1


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class SheetXml:
    """One sheet's XML member, to place calamine's grid and tell text cells from numbers."""

    path: Path
    name: str
    member: str

    def read(self) -> bytes:
        """The whole XML; zipfile checks it against its declared size and CRC."""
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ClinicalDataError(
                f"{self.path}: sheet {self.name!r} cannot be unpacked ({exc})"
            ) from None

    def origin(self) -> tuple[int, int]:
        """(1-based Excel row, 0-based column) of calamine's grid's top-left cell: the first
        row and the first column that hold a value. (1, 0) for a sheet without cell refs.

        Rows are stored in order, so the first valued cell gives the row; when it is in
        column A (as good as always) that is the answer, read from the XML's first chunk.
        Otherwise the leftmost column with a value is searched in the whole XML."""
        head, first = b"", None
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as fh:
                while first is None and (chunk := fh.read(1 << 16)):
                    start = max(0, len(head) - 256)  # a tag cut by the previous chunk
                    head = head[start:] + chunk
                    first = _VALUED_CELL_RE.search(head)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise ClinicalDataError(
                f"{self.path}: sheet {self.name!r} cannot be unpacked ({exc})"
            ) from None
        if first is None:
            return 1, 0
        row, last = int(first.group(2)), column_position(first.group(1).decode())
        if last == 0:
            return row, 0
        xml = self.read()
        for position in range(last):
            letters = column_letter(position).encode()
            pattern = rb'<(?:\w+:)?c\b[^>]*?\br="' + letters + rb'[0-9]+"[^>/]*>'
            if re.search(pattern, xml):
                return row, position
        return row, last

    def text_cells(self, refs: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Those of ``refs`` ((1-based row, 0-based column)) that are text cells."""
        wanted = {f"{column_letter(c)}{r}".encode(): (r, c) for r, c in refs}
        found: set[tuple[int, int]] = set()
        names = sorted(wanted)
        xml = self.read()
        for start in range(0, len(names), 500):
            chunk = b"|".join(names[start : start + 500])
            pattern = rb'<(?:\w+:)?c\b([^>]*?)\br="(' + chunk + rb')"([^>]*)>'
            for match in re.finditer(pattern, xml):
                if _TEXT_TYPE.search(match.group(1) + match.group(3)):
                    found.add(wanted[match.group(2)])
        return found


@dataclass(frozen=True)
class Workbook:
    """A workbook whose size was checked, with its sheets' names and XML members."""

    path: Path
    unpacked_bytes: int
    members: dict[str, str]  # sheet name -> zip member of its XML

    @property
    def sheet_names(self) -> list[str]:
        return list(self.members)

    def sheet_xml(self, name: str) -> SheetXml:
        """The sheet's XML member (read on demand)."""
        return SheetXml(self.path, name, self.members[name])


def open_workbook(path: Path, max_unpacked: int = MAX_UNPACKED_BYTES) -> Workbook:
    """Check ``path`` is an XLSX zip that unpacks to at most ``max_unpacked`` bytes (by its
    members' declared sizes, before anything is decompressed) and list its sheets."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ClinicalDataError(
            f"{path}: not a readable XLSX workbook (an XLSX file is a zip archive: {exc})"
        ) from None
    with archive:
        infos = archive.infolist()
        unpacked = sum(info.file_size for info in infos)
        if unpacked > max_unpacked:
            largest = max(infos, key=lambda info: info.file_size)
            raise ClinicalDataError(
                f"{path}: the workbook unpacks to {unpacked / 2**20:,.0f} MiB (its zip members' "
                f"declared sizes; {largest.filename} alone {largest.file_size / 2**20:,.0f} "
                f"MiB), more than the {max_unpacked / 2**20:,.0f} MiB a lab workbook may; not "
                "read (a zip bomb, or far more than a lab sheet)"
            )
        try:
            members = _sheet_members(archive)
        except (KeyError, ElementTree.ParseError, zipfile.BadZipFile) as exc:
            raise ClinicalDataError(
                f"{path}: not a readable XLSX workbook (its sheet list cannot be read: {exc})"
            ) from None
    return Workbook(path, unpacked, members)


def _sheet_members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Sheet name -> zip member, from the package relationships and workbook.xml."""
    # S314: ElementTree resolves no external entity and the expat of Python 3.12 limits
    # entity expansion, so a hostile workbook cannot read files or blow up memory here.
    workbook = "xl/workbook.xml"
    if "_rels/.rels" in archive.namelist():
        for rel in ElementTree.fromstring(archive.read("_rels/.rels")):  # noqa: S314
            if rel.get("Type", "").endswith("/officeDocument") and rel.get("Target"):
                workbook = rel.get("Target", workbook).lstrip("/")
    folder = posixpath.dirname(workbook)
    rels_name = posixpath.join(folder, "_rels", posixpath.basename(workbook) + ".rels")
    targets: dict[str, str] = {}
    for rel in ElementTree.fromstring(archive.read(rels_name)):  # noqa: S314
        target = rel.get("Target", "")
        member = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
        targets[rel.get("Id", "")] = posixpath.normpath(member)
    members: dict[str, str] = {}
    for element in ElementTree.fromstring(archive.read(workbook)).iter():  # noqa: S314
        if _local(element.tag) == "sheet":
            # r:id, in the transitional or the strict OOXML namespace
            rid = next((v for k, v in element.attrib.items() if k.endswith("}id")), "")
            if rid in targets and element.get("name") is not None:
                members[element.get("name", "")] = targets[rid]
    return members
