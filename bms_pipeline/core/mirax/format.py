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


def index_records(index: bytes, slide_id: str, files: SlideFiles) -> Iterator[IndexRecord]:
    """Every hier (pyramid image) and nonhier record of Index.dat, as OpenSlide reads them."""
    head = INDEX_VERSION + slide_id.encode("utf-8")
    if not index.startswith(head):
        raise SlideError(files.index, "Index.dat does not start with the version and SLIDE_ID")

    def i32(at: int) -> int:
        if at < 0 or at + 4 > len(index):
            raise SlideError(files.index, f"Index.dat is truncated (pointer {at} out of range)")
        return struct.unpack_from("<i", index, at)[0]

    hier = files.sections["HIERARCHICAL"]
    hier_values = sum(int(hier.get(f"HIER_{i}_COUNT", 0)) for i in range(int(hier["HIER_COUNT"])))
    nonhier_values = sum(
        int(hier.get(f"NONHIER_{i}_COUNT", 0)) for i in range(int(hier["NONHIER_COUNT"]))
    )
    zoom_levels = int(hier["HIER_0_COUNT"])
    hier_table = i32(len(head))
    for level in range(min(zoom_levels, hier_values)):
        list_head = i32(hier_table + 4 * level)
        if i32(list_head) != 0:
            raise SlideError(files.index, f"bad list head for zoom level {level}")
        page = i32(list_head + 4)
        while True:
            count, next_ptr = i32(page), i32(page + 4)
            for k in range(count):
                at = page + 8 + HIER_RECORD.size * k
                yield IndexRecord(level, i32(at), None, i32(at + 12), i32(at + 4), i32(at + 8))
            if next_ptr == 0:
                break
            page = next_ptr
    nonhier_table = i32(len(head) + 4)
    for record in range(nonhier_values):
        list_head = i32(nonhier_table + 4 * record)
        if list_head <= 0:
            continue
        page = i32(list_head + 4)
        if i32(page) < 1:
            continue
        yield IndexRecord(None, None, record, i32(page + 24), i32(page + 16), i32(page + 20))
