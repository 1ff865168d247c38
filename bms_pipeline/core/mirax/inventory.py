"""Is a MIRAX slide complete, what does it hold, and what is its content hash?

A MIRAX slide is a `.mrxs` stub plus a folder of files, and a slide that is still being
copied, or was cut short, opens in OpenSlide only to fail on a tile hours into a
conversion. So completeness is checked up front from the files themselves: Slidedat.ini
names the index and data files, and Index.dat gives the extent of every stored image,
which a truncated data file cannot hold.
"""

from __future__ import annotations

import configparser
import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INDEX_VERSION = b"01.02"
_HASH_CHUNK = 8 << 20


class SlideError(Exception):
    """A slide that cannot be used, with the file and the reason in the message."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class FileEntry:
    relative_path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SlideInventory:
    """The files of one slide, each with size and sha256, and a hash over all of them."""

    slide_id: str
    mrxs_path: Path
    files: tuple[FileEntry, ...]
    content_hash: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


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
    slidedat = folder / "Slidedat.ini"
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
                at = page + 8 + 16 * k
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


def _records(index: bytes, slide_id: str, files: SlideFiles) -> Iterator[tuple[int, int, int]]:
    """(fileno, offset, length) of every record, for the completeness check."""
    for record in index_records(index, slide_id, files):
        yield record.fileno, record.offset, record.length


def find_unreadable_images(mrxs_path: Path, limit: int = 5) -> list[str]:
    """Decode every stored pyramid image; describe the first `limit` that fail or have the
    wrong size, naming level, image (x, y), data file and offset.

    Used after a conversion fails inside OpenSlide, whose message does not say which tile.
    """
    import io

    from PIL import Image

    files = check_complete(mrxs_path)
    general = files.sections["GENERAL"]
    images_x = int(general["IMAGENUMBER_X"])
    hier = files.sections["HIERARCHICAL"]
    expected = {}
    for level in range(int(hier["HIER_0_COUNT"])):
        section = files.sections.get(hier.get(f"HIER_0_VAL_{level}_SECTION", ""), {})
        expected[level] = (
            int(section.get("DIGITIZER_WIDTH", 0)),
            int(section.get("DIGITIZER_HEIGHT", 0)),
        )
    problems: list[str] = []
    handles = [open(p, "rb") for p in files.datafiles]  # noqa: SIM115 - closed below
    try:
        for record in index_records(files.index.read_bytes(), general["SLIDE_ID"], files):
            if record.level is None or record.image_index is None:
                continue
            handle = handles[record.fileno]
            handle.seek(record.offset)
            blob = handle.read(record.length)
            x, y = record.image_index % images_x, record.image_index // images_x
            where = (
                f"level {record.level} image (x={x}, y={y}) in "
                f"{files.datafiles[record.fileno].name} at offset {record.offset}"
            )
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    image.load()
                    size = image.size
            except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
                problems.append(f"{where}: {exc}")
            else:
                if size != expected[record.level]:
                    problems.append(
                        f"{where}: decodes to {size}, expected {expected[record.level]}"
                    )
            if len(problems) >= limit:
                break
    finally:
        for handle in handles:
            handle.close()
    return problems


def check_complete(mrxs_path: Path) -> SlideFiles:
    """Raise SlideError unless every file exists and holds every byte the index points to."""
    files = slide_files(mrxs_path)
    slide_id = files.sections.get("GENERAL", {}).get("SLIDE_ID")
    if not slide_id:
        raise SlideError(files.slidedat, "[GENERAL] SLIDE_ID is missing")
    sizes = [p.stat().st_size for p in files.datafiles]
    for fileno, offset, length in _records(files.index.read_bytes(), slide_id, files):
        if not 0 <= fileno < len(sizes):
            raise SlideError(
                files.index, f"a record names data file number {fileno}, which does not exist"
            )
        if offset < 0 or length < 0 or offset + length > sizes[fileno]:
            raise SlideError(
                files.datafiles[fileno],
                f"truncated: the index needs bytes up to {offset + length} "
                f"but the file has {sizes[fileno]}",
            )
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def slide_version(content_hash: str, override_files: Sequence[Path] = ()) -> str:
    """The slide's data version: its content hash, combined with its metadata override
    files' hashes when it has any (they change the DICOM as the slide does)."""
    if not override_files:
        return content_hash
    return hashlib.sha256(
        "".join([content_hash, *(sha256_file(p) for p in override_files)]).encode()
    ).hexdigest()


def inventory(mrxs_path: Path) -> SlideInventory:
    """Check completeness and hash every file; the content hash is the slide's data version."""
    files = check_complete(mrxs_path)
    root = files.mrxs_path.parent
    entries = tuple(
        FileEntry(str(p.relative_to(root)), p.stat().st_size, sha256_file(p))
        for p in files.all_paths
    )
    combined = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.relative_path):
        combined.update(f"{entry.relative_path}\0{entry.size}\0{entry.sha256}\n".encode())
    return SlideInventory(
        slide_id=files.mrxs_path.stem,
        mrxs_path=files.mrxs_path,
        files=entries,
        content_hash=combined.hexdigest(),
    )


def file_signature(mrxs_path: Path, extra: Sequence[Path] = ()) -> str:
    """Cheap change detector (sizes and mtimes of the files present, plus `extra` inputs such
    as metadata override files), for sensors and `status`."""
    mrxs_path = Path(mrxs_path)
    folder = mrxs_path.with_suffix("")
    parts = []
    slide_paths = [mrxs_path, *sorted(folder.glob("*"))] if folder.is_dir() else [mrxs_path]
    for path in [*slide_paths, *extra]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def newest_mtime(mrxs_path: Path) -> float:
    folder = Path(mrxs_path).with_suffix("")
    paths = [Path(mrxs_path), *(folder.glob("*") if folder.is_dir() else [])]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def openslide_properties(mrxs_path: Path) -> dict[str, str]:
    """All OpenSlide properties of the slide (raises SlideError if OpenSlide refuses it)."""
    import openslide

    try:
        with openslide.OpenSlide(str(mrxs_path)) as slide:
            return dict(slide.properties)
    except openslide.OpenSlideError as exc:
        raise SlideError(Path(mrxs_path), f"OpenSlide cannot open the slide ({exc})") from exc
