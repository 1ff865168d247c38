"""The MIRAX format, as OpenSlide reads it: Slidedat.ini and Index.dat, in one place.

A slide is `<name>.mrxs` (an empty stub) beside a folder holding `Slidedat.ini` (an INI file,
UTF-8 with optional BOM), the index file it names (`[HIERARCHICAL] INDEXFILE`) and the data
files it names (`[DATAFILE] FILE_<i>`). Index.dat starts with the version `01.02` and the
SLIDE_ID, then two little-endian int32 pointers: to the hier table (one list head per zoom
level) and to the nonhier table (one per nonhier record). A list head is `0, page`; a page is
`count, next` followed by `count` records. A hier record is
`image_index, offset, length, fileno` (`HIER_RECORD`); a nonhier page holds one record
`1, 0, 0, 0, offset, length, fileno` (`NONHIER_PAGE`). The camera positions are records of
`flag, x, y` (`POSITION_RECORD`). See OpenSlide's `openslide-vendor-mirax.c`.

The reader (`direct`), the completeness check (`inventory`), the synthetic writer and the
benchmarks all read and write through these definitions.
"""

from __future__ import annotations

import configparser
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INDEX_VERSION = b"01.02"
SLIDEDAT = "Slidedat.ini"
HIER_RECORD = struct.Struct("<iiii")
"""image_index, offset, length, fileno."""
NONHIER_PAGE = struct.Struct("<iiiiiii")
"""count (1), three reserved int32, offset, length, fileno."""
POSITION_RECORD = struct.Struct("<Bii")
"""flag (1: scanned), x, y."""


class SlideError(Exception):
    """A slide that cannot be used, with the file and the reason in the message."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class SlideFiles:
    """The files Slidedat.ini says a slide is made of."""

    mrxs_path: Path
    folder: Path
    slidedat: Path
    index: Path
    datafiles: tuple[Path, ...]
    sections: dict[str, dict[str, str]] = field(repr=False)

    @property
    def all_paths(self) -> tuple[Path, ...]:
        return (self.mrxs_path, self.slidedat, self.index, *self.datafiles)


def read_slidedat(path: Path) -> dict[str, dict[str, str]]:
    """Parse Slidedat.ini (UTF-8 with optional BOM, CRLF) as OpenSlide's GKeyFile does."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, configparser.Error) as exc:
        raise SlideError(path, f"cannot parse Slidedat.ini ({exc})") from exc
    return {name: dict(parser[name]) for name in parser.sections()}


def slide_files(mrxs_path: Path) -> SlideFiles:
    """Locate every file the slide needs; raise SlideError naming the first that is missing."""
    mrxs_path = Path(mrxs_path)
    if not mrxs_path.is_file():
        raise SlideError(mrxs_path, "the .mrxs file does not exist")
    folder = mrxs_path.with_suffix("")
    if not folder.is_dir():
        raise SlideError(folder, "the slide folder next to the .mrxs file does not exist")
    slidedat = folder / SLIDEDAT
    if not slidedat.is_file():
        raise SlideError(slidedat, "Slidedat.ini is missing")
    sections = read_slidedat(slidedat)
    try:
        index_name = sections["HIERARCHICAL"]["INDEXFILE"]
        count = int(sections["DATAFILE"]["FILE_COUNT"])
        data_names = [sections["DATAFILE"][f"FILE_{i}"] for i in range(count)]
    except (KeyError, ValueError) as exc:
        raise SlideError(slidedat, f"Slidedat.ini lacks a required key ({exc})") from exc
    index = folder / index_name
    if not index.is_file():
        raise SlideError(index, "the index file named by [HIERARCHICAL] INDEXFILE is missing")
    datafiles = tuple(folder / name for name in data_names)
    for datafile in datafiles:
        if not datafile.is_file():
            raise SlideError(datafile, "a data file named by [DATAFILE] is missing")
    return SlideFiles(mrxs_path, folder, slidedat, index, datafiles, sections)


@dataclass(frozen=True)
class IndexRecord:
    """One stored blob: a pyramid image (`level`, `image_index`) or a nonhier record."""

    level: int | None
    image_index: int | None
    nonhier_record: int | None
    fileno: int
    offset: int
    length: int


class IndexDat:
    """Index.dat with bounds-checked little-endian int32 reads, its header checked against
    the slide's SLIDE_ID. A subclass changes `fail` to raise its own kind of error."""

    def __init__(self, path: Path, data: bytes, slide_id: str) -> None:
        self.path = path
        self.data = data
        head = INDEX_VERSION + slide_id.encode("utf-8")
        if not data.startswith(INDEX_VERSION):
            raise self.fail("Index.dat doesn't have the expected version")
        if not data.startswith(head):
            raise self.fail("Index.dat doesn't have a matching slide identifier")
        self.hier_root = len(head)
        """Where the pointer to the hier table (one list head per zoom level) lies."""
        self.nonhier_root = len(head) + 4
        """Where the pointer to the nonhier table (one list head per record) lies."""

    def fail(self, reason: str) -> Exception:
        return SlideError(self.path, reason)

    def i32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.data):
            raise self.fail(f"Index.dat is truncated (pointer {at} out of range)")
        return struct.unpack_from("<i", self.data, at)[0]

    def hier_records(self, level: int) -> Iterator[tuple[int, int, int, int]]:
        """(image_index, offset, length, fileno) of every stored image of a zoom level, page
        by page, as OpenSlide's process_hier_data_pages_from_indexfile reads them."""
        head_at = self.i32(self.i32(self.hier_root) + 4 * level)
        if self.i32(head_at) != 0:
            raise self.fail(f"zoom level {level}: expected 0 at the list head")
        page = self.i32(head_at + 4)
        while True:
            count, next_page = self.i32(page), self.i32(page + 4)
            if count < 0:
                raise self.fail(f"zoom level {level}: negative page length")
            for k in range(count):
                at = page + 8 + HIER_RECORD.size * k
                image_index, offset, length, fileno = (self.i32(at + 4 * j) for j in range(4))
                if min(image_index, offset, length, fileno) < 0:
                    raise self.fail(f"zoom level {level}: negative value in record {k}")
                yield image_index, offset, length, fileno
            if next_page == 0:
                return
            page = next_page

    def nonhier_record(self, record: int) -> tuple[int, int, int]:
        """(offset, length, fileno) of a nonhier record, as OpenSlide's read_nonhier_record."""
        head = self.i32(self.i32(self.nonhier_root) + 4 * record)
        if self.i32(head) != 0:
            raise self.fail(f"nonhier record {record}: expected 0 at the list head")
        page = self.i32(head + 4)
        if self.i32(page) != 1:
            raise self.fail(f"nonhier record {record}: expected a page of one record")
        if self.i32(page + 8) != 0 or self.i32(page + 12) != 0:
            raise self.fail(f"nonhier record {record}: expected zeros in the data page")
        return self.i32(page + 16), self.i32(page + 20), self.i32(page + 24)

    def stored_nonhier_record(self, record: int) -> tuple[int, int, int] | None:
        """Like `nonhier_record`, but None for a record the scanner left empty."""
        head = self.i32(self.i32(self.nonhier_root) + 4 * record)
        if head <= 0:
            return None
        page = self.i32(head + 4)
        if self.i32(page) < 1:
            return None
        return self.i32(page + 16), self.i32(page + 20), self.i32(page + 24)


def index_records(index: bytes, slide_id: str, files: SlideFiles) -> Iterator[IndexRecord]:
    """Every hier (pyramid image) and nonhier record of Index.dat, as OpenSlide reads them."""
    reader = IndexDat(files.index, index, slide_id)
    hier = files.sections["HIERARCHICAL"]
    hier_values = sum(int(hier.get(f"HIER_{i}_COUNT", 0)) for i in range(int(hier["HIER_COUNT"])))
    nonhier_values = sum(
        int(hier.get(f"NONHIER_{i}_COUNT", 0)) for i in range(int(hier["NONHIER_COUNT"]))
    )
    for level in range(min(int(hier["HIER_0_COUNT"]), hier_values)):
        for image_index, offset, length, fileno in reader.hier_records(level):
            yield IndexRecord(level, image_index, None, fileno, offset, length)
    for record in range(nonhier_values):
        stored = reader.stored_nonhier_record(record)
        if stored is not None:
            offset, length, fileno = stored
            yield IndexRecord(None, None, record, fileno, offset, length)
