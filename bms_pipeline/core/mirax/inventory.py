"""Is a MIRAX slide complete, what does it hold, and what is its content hash?

A MIRAX slide is a `.mrxs` stub plus a folder of files, and a slide that is still being
copied, or was cut short, opens in OpenSlide only to fail on a tile hours into a
conversion. So completeness is checked up front from the files themselves: Slidedat.ini
names the index and data files, and Index.dat gives the extent of every stored image,
which a truncated data file cannot hold.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bms_pipeline.core.heap import release_freed_heap
from bms_pipeline.core.mirax.format import (
    INDEX_VERSION,
    IndexRecord,
    SlideError,
    SlideFiles,
    index_records,
    read_slidedat,
    slide_files,
)

__all__ = [
    "INDEX_VERSION",
    "IndexRecord",
    "SlideError",
    "SlideFiles",
    "read_slidedat",
    "slide_files",
]

_HASH_CHUNK = 8 << 20

HASH_THREADS = 2
"""Files hashed at once. hashlib releases the GIL on large updates, and hashing is bound by
the CPU (SHA-256 and the page-cache copy), not the disk: the 17 GB of a full-height slide's
20 files took 20.2 s on one thread and 10.4 s on two, from a cold page cache (2 cores)."""


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
    """SHA-256 of a file, read into one anonymous mapping of `_HASH_CHUNK` bytes.

    Reading 8 MiB `bytes` objects made glibc raise its mmap threshold after the first was
    freed, so the rest came from the hashing threads' arenas, which the conversion that
    follows in the same process then kept resident (+15 MiB over the quarter-height
    slide's writing, measured). A mapping of our own is returned whole when closed.
    """
    digest = hashlib.sha256()
    with mmap.mmap(-1, _HASH_CHUNK) as buffer, open(path, "rb", buffering=0) as handle:
        view = memoryview(buffer)
        try:
            while count := handle.readinto(view):
                with view[:count] as chunk:
                    digest.update(chunk)
        finally:
            view.release()
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
    paths = list(files.all_paths)
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="bms-hash") as pool:
        digests = list(pool.map(sha256_file, paths))
    entries = tuple(
        FileEntry(str(p.relative_to(root)), p.stat().st_size, digest)
        for p, digest in zip(paths, digests, strict=True)
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
    parts: list[str] = []
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
    paths = [Path(mrxs_path), *(folder.glob("*") if folder.is_dir() else ())]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def openslide_properties(mrxs_path: Path) -> dict[str, str]:
    """All OpenSlide properties of the slide (raises SlideError if OpenSlide refuses it).

    Read from the files at every call, so a step sees the slide as it is now (opening a demo
    slide takes OpenSlide about 2 ms, a real-width one 14-22 ms)."""
    import openslide

    try:
        with openslide.OpenSlide(str(mrxs_path)) as slide:
            return dict(slide.properties)
    except openslide.OpenSlideError as exc:
        raise SlideError(Path(mrxs_path), f"OpenSlide cannot open the slide ({exc})") from exc
    finally:
        # OpenSlide's tile map, freed amid live blocks, would stay resident: 132 MiB for a
        # full-height slide, measured.
        release_freed_heap()
