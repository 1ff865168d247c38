"""Read MIRAX level pixels straight from the stored camera images, byte for byte as OpenSlide.

OpenSlide's `read_region` on a MIRAX slide decodes each stored image, wraps it in a cairo
surface and composites it with the SATURATE operator. Where every image lands on a whole
pixel that composite is a plain paste, so this module does it with numpy instead: it
rebuilds OpenSlide 4's tile map (`openslide-vendor-mirax.c`, the tilemap grid of
`openslide-grid.c`) from Slidedat.ini and Index.dat, decodes with the same libjpeg-turbo
settings (`openslide-decode-jpeg.c`: default ISLOW DCT and fancy upsampling, output
JCS_EXT_BGRA) and pastes in OpenSlide's painting order. The speed comes from a decoded-image
cache sized for raster-order reads (OpenSlide's default 32 MiB cache re-decodes images
shared by consecutive tile rows), from reusing evicted image buffers, and from decoding in
parallel without the cairo work. Anything it cannot reproduce exactly raises
`MiraxDirectUnsupported`, so the caller can fall back to OpenSlide.

OpenSlide semantics reproduced here (OpenSlide 4.0):

* placement: level-0 image (x, y) of camera field (xp, yp) = (x // d, y // d) sits at the
  field position plus (x % d) * DIGITIZER_WIDTH; field positions come from
  VIMSLIDE_POSITION_BUFFER, else StitchingIntensityLayer (zlib), else the nominal grid
  spaced by field size minus OVERLAP_X/Y; a position of (0, 0) for a field other than
  (0, 0) means "not scanned" (`get_tile_position`).
* each stored image is a tile of a tile map keyed by (col, row) with a fractional offset
  from `col * advance`; advance = tile size - overlap / images-per-position.
* painting: tiles are visited from the bottom-right to the top-left of the requested tile
  range (widened by the "extra tiles" the offsets need) and composited with SATURATE onto
  a cleared surface, so where images overlap the one with the larger (row, col) wins.
  Painting forwards with overwrite gives the same pixels.
* `openslide_read_region` splits a read into 4096 x 4096 pieces and shifts negative
  origins by `(int64)(-x / downsample)` level pixels; both are emulated.
* pixels are opaque premultiplied ARGB (BGRA bytes on little-endian) or 0 where no image
  paints.
"""

from __future__ import annotations

import math
import operator
import os
import struct
import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from imagecodecs import JPEG8, jpeg8_decode, png_decode

from bms_pipeline.core.mirax.format import HIER_RECORD, INDEX_VERSION, POSITION_RECORD, SLIDEDAT
from bms_pipeline.core.mirax.inventory import SlideError, read_slidedat

_READ_PIECE = 4096  # openslide_read_region paints at most 4096 x 4096 pixels at a time
_DYADIC = 256  # advances must be multiples of 1/256 so float sums stay exact
_FORMATS = frozenset({"JPEG", "PNG", "BMP24"})  # parse_image_format of OpenSlide
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MiraxDirectUnsupported(Exception):
    """The slide, level or read cannot be reproduced exactly; fall back to OpenSlide."""


class MiraxDirectError(Exception):
    """The slide's data cannot be read (a truncated data file, an undecodable image).

    Not a reason to fall back: OpenSlide fails on the same image, only less clearly.
    """


@dataclass(frozen=True, slots=True)
class _Image:
    fileno: int
    offset: int
    length: int
    level: int
    x: int  # level-0 image index, for messages
    y: int


@dataclass(frozen=True, slots=True)
class _Tile:
    """One tile-map entry: a stored image, or the sub-rectangle of one at higher levels."""

    offset_x: float  # delta from the natural position col * advance, in level pixels
    offset_y: float
    image: _Image
    src_x: int  # painted sub-rectangle of the decoded image
    src_y: int
    paint_w: int
    paint_h: int


@dataclass
class _Level:
    index: int
    downsample: float
    image_format: str
    image_w: int
    image_h: int
    tile_w: float
    tile_h: float
    advance_x: float
    advance_y: float
    tiles: dict[tuple[int, int], _Tile]
    extra_left: int = 0
    extra_right: int = 0
    extra_top: int = 0
    extra_bottom: int = 0
    unsupported: str | None = None


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int


class _Entry:
    """A decoded image; `pins` counts readers pasting from it, so that its buffer is only
    reused for another decode once nobody reads it. `carry`: the last read that used it
    ended above its bottom edge, so the next tile row will read it again."""

    __slots__ = ("array", "cached", "carry", "pins")

    def __init__(self, array: np.ndarray, pins: int, carry: bool = False) -> None:
        self.array = array
        self.pins = pins
        self.cached = False
        self.carry = carry


class _Pending:
    """A decode in progress; other threads wanting the same image wait on it."""

    __slots__ = ("done", "entry", "error", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class _ImageCache:
    """Decoded images with a byte budget, evicted in the order raster reads need them.

    Reads go tile row by tile row. An image whose bottom edge lies below the read that used
    it (a *carry*) is needed again by the next tile row; the others only, at most, by the
    next tile to the right. So the cache evicts the least recently used of the others
    first, and only then carries, the most recently used first: a budget smaller than a
    row of carries keeps the left part of the row (which the next tile row reads first)
    instead of evicting each carry before it is read again, as plain LRU would. The budget
    then bounds memory whatever the slide's width, at the cost of decoding again only the
    carries that did not fit.

    The lock only guards the bookkeeping: decoding runs outside it (imagecodecs releases
    the GIL), and a second thread asking for an image being decoded waits for that decode
    instead of repeating it. Evicted buffers that nobody reads any more are handed to the
    next decode as its output: writing into fresh memory costs page faults that are a
    third of a JPEG decode here.
    """

    def __init__(self, budget: int, spares_per_shape: int = 8) -> None:
        self._budget = max(0, int(budget))
        self._spares_per_shape = spares_per_shape
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()  # not carries
        self._carries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._group: object = None
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._spares: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    def acquire(
        self,
        key: tuple[int, int],
        shape: tuple[int, ...],
        load: Callable[[np.ndarray | None], np.ndarray],
        wait: bool = True,
        carry: bool = False,
        group: object = None,
    ) -> _Entry | None:
        """The pinned entry for `key`, decoding it with `load(spare_or_None)` if needed;
        pair every entry returned with `release`. With `wait=False`, None instead of
        waiting for another thread's decode, so the caller can decode something else
        first. `carry`: the next tile row needs the image too. A new `group` (the level
        being read) makes every carry of the previous one an ordinary entry."""
        spare = None
        with self._lock:
            if group != self._group:
                self._group = group
                for old_key, old in self._carries.items():
                    old.carry = False
                    self._entries[old_key] = old
                self._carries.clear()
            entry = self._entries.get(key) or self._carries.get(key)
            if entry is not None:
                self._place(key, entry, carry)
                entry.pins += 1
                self._hits += 1
                return entry
            pending = self._pending.get(key)
            if pending is not None and not wait:
                return None
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
                self._misses += 1
                spares = self._spares.get(shape)
                spare = spares.pop() if spares else None
            else:
                pending.waiters += 1
                self._hits += 1
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.entry is not None
            return pending.entry
        try:
            if spare is not None:
                spare.flags.writeable = True
            array = load(spare)
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        array.flags.writeable = False
        with self._lock:
            del self._pending[key]
            entry = _Entry(array, pins=1 + pending.waiters)
            if array.nbytes <= self._budget:
                entry.cached = True
                self._place(key, entry, carry)
                self._bytes += array.nbytes
                while self._bytes > self._budget:
                    if self._entries:
                        _, old = self._entries.popitem(last=False)
                    else:
                        _, old = self._carries.popitem(last=True)
                    old.cached = False
                    self._bytes -= old.array.nbytes
                    if old.pins == 0:
                        self._recycle(old.array)
        pending.entry = entry
        pending.done.set()
        return entry

    def _place(self, key: tuple[int, int], entry: _Entry, carry: bool) -> None:
        """Make `entry` the most recently used of its class (lock held)."""
        if entry.cached:
            (self._carries if entry.carry else self._entries).pop(key, None)
        entry.carry = carry
        (self._carries if carry else self._entries)[key] = entry

    def release(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.pins == 0 and not entry.cached:
                self._recycle(entry.array)

    def _recycle(self, array: np.ndarray) -> None:
        spares = self._spares.setdefault(array.shape, [])
        if len(spares) < self._spares_per_shape:
            spares.append(array)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                len(self._entries) + len(self._carries),
                self._bytes,
                self._budget,
            )

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._carries.clear()
            self._spares.clear()
            self._bytes = 0


def _png_header(blob: bytes, where: str) -> tuple[int, int]:
    """(bit depth, colour type) of a PNG, refusing what OpenSlide would turn into alpha.

    OpenSlide expands palettes and tRNS to alpha and then rejects anything but RGB, and
    scales 16-bit samples; only 8-bit RGB and grey without tRNS are a plain decode.
    """
    if not blob.startswith(_PNG_SIGNATURE) or blob[12:16] != b"IHDR":
        raise MiraxDirectError(f"{where}: not a PNG image")
    depth, colour_type = blob[24], blob[25]
    at = 8
    while at + 8 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, at)
        kind = blob[at + 4 : at + 8]
        if kind == b"tRNS":
            raise MiraxDirectUnsupported(f"{where}: PNG with a tRNS chunk (OpenSlide reads alpha)")
        if kind == b"IDAT":
            break
        at += 12 + length
    if depth != 8 or colour_type not in (0, 2):
        raise MiraxDirectUnsupported(
            f"{where}: PNG with bit depth {depth} and colour type {colour_type} "
            "(only 8-bit RGB or grey is a plain decode)"
        )
    return depth, colour_type


def decode_image_bgra(
    blob: bytes, image_format: str, where: str = "image", out: np.ndarray | None = None
) -> np.ndarray:
    """Decode a stored image to (h, w, 4) BGRA with alpha 255, as OpenSlide decodes it.

    JPEG: libjpeg-turbo with its defaults (ISLOW DCT, fancy upsampling) straight to
    JCS_EXT_BGRA, the call OpenSlide makes on little-endian machines. `out`, if its shape
    fits, receives the pixels (reusing a buffer is cheaper than faulting in a new one).
    """
    try:
        if image_format == "JPEG":
            if not blob.startswith(b"\xff\xd8"):
                raise MiraxDirectError(f"{where}: not a JPEG image (no SOI marker)")
            if not blob.endswith(b"\xff\xd9"):
                # OpenSlide reads past the index length until libjpeg stops; only an
                # exactly delimited stream is known to decode the same.
                raise MiraxDirectUnsupported(f"{where}: JPEG record does not end with EOI")
            try:
                pixels = jpeg8_decode(blob, outcolorspace=JPEG8.CS.EXT_BGRA, out=out)
            except Exception:
                if out is None:
                    raise
                # most likely a size other than `out`'s: decode again to report it
                pixels = jpeg8_decode(blob, outcolorspace=JPEG8.CS.EXT_BGRA)
            if pixels.ndim != 3 or pixels.shape[2] != 4:
                raise MiraxDirectUnsupported(f"{where}: JPEG decodes to shape {pixels.shape}")
            return pixels
        if image_format == "PNG":
            _, colour_type = _png_header(blob, where)
            decoded = png_decode(blob)
            height, width = decoded.shape[:2]
            fits = out is not None and out.shape == (height, width, 4) and out.dtype == np.uint8
            bgra = out if fits and out is not None else np.empty((height, width, 4), np.uint8)
            if colour_type == 0:
                grey = decoded if decoded.ndim == 2 else decoded[..., 0]
                bgra[..., 0] = grey
                bgra[..., 1] = grey
                bgra[..., 2] = grey
            else:
                bgra[..., 0] = decoded[..., 2]
                bgra[..., 1] = decoded[..., 1]
                bgra[..., 2] = decoded[..., 0]
            bgra[..., 3] = 255
            return bgra
    except (MiraxDirectError, MiraxDirectUnsupported):
        raise
    except Exception as exc:  # any decoder failure becomes an error naming the image
        raise MiraxDirectError(f"{where}: cannot decode {image_format} ({exc})") from exc
    raise MiraxDirectUnsupported(f"{where}: image format {image_format}")


class _SlidedatReader:
    """Typed access to Slidedat.ini values, failing with the file and key in the message."""

    def __init__(self, path: Path, sections: dict[str, dict[str, str]]) -> None:
        self.path = path
        self.sections = sections

    def fail(self, reason: str) -> MiraxDirectUnsupported:
        return MiraxDirectUnsupported(f"{self.path}: {reason}")

    def value(self, group: str, key: str) -> str:
        if group not in self.sections:
            raise self.fail(f"Slidedat.ini has no [{group}] group")
        try:
            return self.sections[group][key].strip()
        except KeyError:
            raise self.fail(f"Slidedat.ini lacks [{group}] {key}") from None

    def integer(self, group: str, key: str) -> int:
        text = self.value(group, key)
        try:
            return int(text)
        except ValueError:
            raise self.fail(f"[{group}] {key} = {text!r} is not an integer") from None

    def double(self, group: str, key: str) -> float:
        text = self.value(group, key)
        try:
            return float(text)
        except ValueError:
            raise self.fail(f"[{group}] {key} = {text!r} is not a number") from None


class _IndexReader:
    """Little-endian int32 reads from Index.dat with bounds checks."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data

    def fail(self, reason: str) -> MiraxDirectUnsupported:
        return MiraxDirectUnsupported(f"{self.path}: {reason}")

    def i32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.data):
            raise self.fail(f"Index.dat is truncated (pointer {at} out of range)")
        return struct.unpack_from("<i", self.data, at)[0]


def _nonhier_offset(ini: _SlidedatReader, count: int, name: str) -> int:
    """Record number of the first value of NONHIER layer `name`, or -1 (OpenSlide's
    get_nonhier_name_offset_helper)."""
    offset = 0
    for i in range(count):
        value = ini.value("HIERARCHICAL", f"NONHIER_{i}_NAME")
        values = ini.integer("HIERARCHICAL", f"NONHIER_{i}_COUNT")
        if values == 0:
            raise ini.fail(f"NONHIER_{i}_COUNT is zero")
        if value == name:
            return offset
        offset += values
    return -1


def _nonhier_record(index: _IndexReader, nonhier_root: int, record: int) -> tuple[int, int, int]:
    """(offset, length, fileno) of a nonhier record, as OpenSlide's read_nonhier_record."""
    table = index.i32(nonhier_root)
    head = index.i32(table + 4 * record)
    if index.i32(head) != 0:
        raise index.fail(f"nonhier record {record}: expected 0 at the list head")
    page = index.i32(head + 4)
    if index.i32(page) != 1:
        raise index.fail(f"nonhier record {record}: expected a page of one record")
    if index.i32(page + 8) != 0 or index.i32(page + 12) != 0:
        raise index.fail(f"nonhier record {record}: expected zeros in the data page")
    return index.i32(page + 16), index.i32(page + 20), index.i32(page + 24)


class MiraxDirectReader:
    """Level pixels of a MIRAX slide, equal to OpenSlide's `read_region` output.

    Thread-safe: reads share a decoded-image cache and one open file descriptor per data
    file (read with `os.pread`, which has no file position to race on). `close` must not
    run while reads are in progress.
    """

    def __init__(
        self,
        mrxs_path: Path,
        datafiles: list[Path],
        levels: list[_Level],
        bounds: tuple[int, int, int, int],
        cache_bytes: int,
    ) -> None:
        self._path = mrxs_path
        self._datafiles = datafiles
        self._levels = levels
        self._bounds = bounds
        self._cache = _ImageCache(cache_bytes)
        self._fds: list[int] | None = []
        try:
            for path in datafiles:
                self._fds.append(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        except OSError as exc:
            self.close()
            raise MiraxDirectUnsupported(f"{exc.filename}: cannot open data file ({exc})") from exc

    # construction -------------------------------------------------------------------

    @classmethod
    def open(cls, mrxs_path: Path, cache_bytes: int = 96 << 20) -> MiraxDirectReader:
        """Parse Slidedat.ini and Index.dat into OpenSlide's tile maps.

        Raises MiraxDirectUnsupported, naming the file and the reason, for anything whose
        level-0 pixels this reader would not reproduce exactly. `cache_bytes` bounds the
        decoded images kept (4 bytes a pixel; up to 8 evicted buffers per image size are
        kept on top for reuse). Raster-order reads decode every image once when it holds
        the image rows under the tile rows being read at the same time, for example
        (512 / image height + 1) image rows per tile row; a smaller budget still gives
        the same pixels, only with images decoded again.
        """
        if sys.byteorder != "little":
            raise MiraxDirectUnsupported(
                "OpenSlide's ARGB words are BGRA bytes only on little-endian"
            )
        mrxs_path = Path(mrxs_path)
        folder = mrxs_path.with_suffix("")
        slidedat_path = folder / SLIDEDAT
        if mrxs_path.suffix != ".mrxs" or not mrxs_path.is_file():
            raise MiraxDirectUnsupported(f"{mrxs_path}: not an existing .mrxs file")
        if not slidedat_path.is_file():
            raise MiraxDirectUnsupported(f"{slidedat_path}: Slidedat.ini is missing")
        try:
            sections = read_slidedat(slidedat_path)
        except SlideError as exc:
            raise MiraxDirectUnsupported(str(exc)) from exc
        ini = _SlidedatReader(slidedat_path, sections)
        levels, bounds, datafiles = _build_levels(ini, folder)
        return cls(mrxs_path, datafiles, levels, bounds, cache_bytes)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the data files and drop the cache; later reads raise ValueError."""
        fds, self._fds = self._fds, None
        for fd in fds or ():
            os.close(fd)
        self._cache.clear()

    # queries ------------------------------------------------------------------------

    @property
    def level_count(self) -> int:
        return len(self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(level.downsample for level in self._levels)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) as OpenSlide's `openslide.bounds-*` properties."""
        return self._bounds

    def supports_level(self, level: int) -> bool:
        """True when every image of `level` lands on a whole pixel for reads whose
        level-0 origin is congruent to the slide bounds modulo the downsample (the reads
        a DICOM conversion makes); other reads may still raise MiraxDirectUnsupported."""
        return 0 <= level < len(self._levels) and self._levels[level].unsupported is None

    def unsupported_reason(self, level: int) -> str | None:
        if not 0 <= level < len(self._levels):
            return f"level {level} does not exist"
        return self._levels[level].unsupported

    def cache_stats(self) -> CacheStats:
        return self._cache.stats()

    # reading ------------------------------------------------------------------------

    def read_bgra(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The (height, width, 4) BGRA buffer `openslide_read_region` fills for the same
        arguments: x, y in level-0 pixels of the whole slide, size in level pixels."""
        level, x, y = operator.index(level), operator.index(x), operator.index(y)
        width, height = operator.index(width), operator.index(height)
        if width < 0 or height < 0:
            raise ValueError(f"negative size {width}x{height}")
        if self._fds is None:
            raise ValueError(f"{self._path}: reader is closed")
        out = np.zeros((height, width, 4), dtype=np.uint8)
        if not 0 <= level < len(self._levels):
            return out  # OpenSlide paints nothing for a level it does not have
        lv = self._levels[level]
        if lv.unsupported is not None:
            raise MiraxDirectUnsupported(f"{self._path}: level {level}: {lv.unsupported}")
        ds = lv.downsample
        piece = _READ_PIECE
        for row in range((height + piece - 1) // piece):
            for col in range((width + piece - 1) // piece):
                sx = int(x + col * piece * ds)
                sy = int(y + row * piece * ds)
                sw = min(width - col * piece, piece)
                sh = min(height - row * piece, piece)
                view = out[row * piece : row * piece + sh, col * piece : col * piece + sw]
                self._paint_piece(lv, view, sx, sy, sw, sh)
        return out

    def _paint_piece(self, lv: _Level, view: np.ndarray, x: int, y: int, w: int, h: int) -> None:
        """One `read_region` call of openslide.c plus the tilemap grid's paint_region."""
        ds = lv.downsample
        tx = ty = 0
        if x < 0:
            tx = int(-x / ds)
            x = 0
            w -= tx
        if y < 0:
            ty = int(-y / ds)
            y = 0
            h -= ty
        if w <= 0 or h <= 0:
            return
        rx, ry = x / ds, y / ds
        adv_x, adv_y = lv.advance_x, lv.advance_y
        start_x, start_y = int(rx / adv_x), int(ry / adv_y)
        end_x = math.ceil((rx + w) / adv_x) + lv.extra_right
        end_y = math.ceil((ry + h) / adv_y) + lv.extra_bottom
        region_off_x = rx - start_x * adv_x
        region_off_y = ry - start_y * adv_y
        start_x -= lv.extra_left
        start_y -= lv.extra_top
        base_x = -lv.extra_left * adv_x + tx
        base_y = -lv.extra_top * adv_y + ty
        tile_w, tile_h = lv.tile_w, lv.tile_h
        tiles = lv.tiles
        # Forward raster order with overwrite == OpenSlide's reverse order with SATURATE.
        paints: list[tuple[_Tile, int, int]] = []
        for row in range(start_y, end_y):
            cy = ((row - start_y) * adv_y - region_off_y) + base_y
            for col in range(start_x, end_x):
                tile = tiles.get((col, row))
                if tile is None:
                    continue
                px = col * adv_x + tile.offset_x
                py = row * adv_y + tile.offset_y
                if px + tile_w <= rx or py + tile_h <= ry or px >= rx + w or py >= ry + h:
                    continue
                dest_x = (((col - start_x) * adv_x - region_off_x) + base_x) + tile.offset_x
                dest_y = cy + tile.offset_y
                if not (dest_x.is_integer() and dest_y.is_integer()):
                    raise MiraxDirectUnsupported(
                        f"{self._path}: level {lv.index}: read at ({x}, {y}) would place "
                        f"image ({tile.image.x}, {tile.image.y}) at the fractional offset "
                        f"({dest_x}, {dest_y}), which OpenSlide resamples"
                    )
                paints.append((tile, int(dest_x), int(dest_y)))
        if not paints:
            return
        pinned: dict[tuple[int, int], _Entry] = {}
        try:
            self._paste(lv, view, paints, pinned)
        finally:
            for entry in pinned.values():
                self._cache.release(entry)

    def _paste(
        self,
        lv: _Level,
        view: np.ndarray,
        paints: list[tuple[_Tile, int, int]],
        pinned: dict[tuple[int, int], _Entry],
    ) -> None:
        surface_h, surface_w = view.shape[:2]
        needed: dict[tuple[int, int], _Image] = {}
        carries: set[tuple[int, int]] = set()
        copies: list[tuple[tuple[int, int], int, int, int, int, int, int]] = []
        for tile, dx, dy in paints:
            x0, y0 = max(dx, 0), max(dy, 0)
            x1 = min(dx + tile.paint_w, surface_w)
            y1 = min(dy + tile.paint_h, surface_h)
            if x0 >= x1 or y0 >= y1:
                continue
            key = (tile.image.fileno, tile.image.offset)
            needed.setdefault(key, tile.image)
            if dy - tile.src_y + lv.image_h > surface_h:
                carries.add(key)  # the image reaches below this read: the next row reads it
            copies.append((key, x0, y0, x1, y1, tile.src_x + x0 - dx, tile.src_y + y0 - dy))
        # Decode what no other thread is decoding first, then wait for the rest: threads
        # on neighbouring tiles share images, and waiting in painting order would make
        # them take turns instead of decoding side by side.
        shape = (lv.image_h, lv.image_w, 4)
        deferred = []
        for key, image in needed.items():
            entry = self._cache.acquire(
                key,
                shape,
                self._loader(lv, image),
                wait=False,
                carry=key in carries,
                group=lv.index,
            )
            if entry is None:
                deferred.append(key)
            else:
                pinned[key] = entry
        for key in deferred:
            entry = self._cache.acquire(
                key, shape, self._loader(lv, needed[key]), carry=key in carries, group=lv.index
            )
            assert entry is not None
            pinned[key] = entry
        for key, x0, y0, x1, y1, sx, sy in copies:
            view[y0:y1, x0:x1] = pinned[key].array[sy : sy + y1 - y0, sx : sx + x1 - x0]

    def _loader(self, lv: _Level, image: _Image) -> Callable[[np.ndarray | None], np.ndarray]:
        return lambda spare: self._decode(lv, image, spare)

    def _decode(self, lv: _Level, image: _Image, spare: np.ndarray | None) -> np.ndarray:
        fds = self._fds
        if fds is None:
            raise ValueError(f"{self._path}: reader is closed")
        path = self._datafiles[image.fileno]
        where = (
            f"{path}: level {lv.index} image (x={image.x}, y={image.y}) at offset {image.offset}"
        )
        try:
            blob = os.pread(fds[image.fileno], image.length, image.offset)
        except OSError as exc:
            raise MiraxDirectError(f"{where}: read failed ({exc})") from exc
        if len(blob) != image.length:
            raise MiraxDirectError(
                f"{path}: truncated: level {lv.index} image (x={image.x}, y={image.y}) "
                f"needs bytes {image.offset}..{image.offset + image.length} but the file "
                f"ends at {image.offset + len(blob)}"
            )
        pixels = decode_image_bgra(blob, lv.image_format, where, spare)
        if pixels.shape[:2] != (lv.image_h, lv.image_w):
            raise MiraxDirectError(
                f"{where}: decodes to {pixels.shape[1]}x{pixels.shape[0]}, "
                f"expected {lv.image_w}x{lv.image_h}"
            )
        return pixels


# building the tile maps ----------------------------------------------------------------


@dataclass(frozen=True)
class _LevelSection:
    concat_exponent: int
    overlap_x: float
    overlap_y: float
    image_format: str
    image_w: int
    image_h: int


def _read_level_section(ini: _SlidedatReader, level: int, group: str) -> _LevelSection:
    if group not in ini.sections:
        raise ini.fail(f"Slidedat.ini has no [{group}] group (zoom level {level})")
    concat = ini.integer(group, "IMAGE_CONCAT_FACTOR")
    overlap_x = ini.double(group, "OVERLAP_X")
    overlap_y = ini.double(group, "OVERLAP_Y")
    ini.double(group, "MICROMETER_PER_PIXEL_X")
    ini.double(group, "MICROMETER_PER_PIXEL_Y")
    ini.integer(group, "IMAGE_FILL_COLOR_BGR")
    image_w = ini.integer(group, "DIGITIZER_WIDTH")
    image_h = ini.integer(group, "DIGITIZER_HEIGHT")
    image_format = ini.value(group, "IMAGE_FORMAT")
    if image_format not in _FORMATS:
        raise ini.fail(f"[{group}] IMAGE_FORMAT = {image_format!r} is not JPEG, PNG or BMP24")
    if concat < 0 or (level > 0 and concat <= 0):
        raise ini.fail(f"[{group}] IMAGE_CONCAT_FACTOR = {concat} is out of range")
    if image_w <= 0 or image_h <= 0:
        raise ini.fail(f"[{group}] DIGITIZER_WIDTH/HEIGHT must be positive")
    return _LevelSection(concat, overlap_x, overlap_y, image_format, image_w, image_h)


def _slide_positions(
    index: _IndexReader,
    datafiles: list[Path],
    nonhier_root: int,
    position_record: int,
    compressed: bool,
    npositions: int,
    positions_x: int,
    level0: _LevelSection,
    divisions: int,
) -> list[tuple[int, int]]:
    """Camera field positions in level-0 pixels, as OpenSlide's process_indexfile."""
    if position_record == -1:
        step_x = level0.image_w * divisions - level0.overlap_x
        step_y = level0.image_h * divisions - level0.overlap_y
        return [
            (int((i % positions_x) * step_x), int((i // positions_x) * step_y))
            for i in range(npositions)
        ]
    offset, length, fileno = _nonhier_record(index, nonhier_root, position_record)
    if not 0 <= fileno < len(datafiles):
        raise index.fail(f"position record names data file {fileno}, which does not exist")
    path = datafiles[fileno]
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(length)
    except OSError as exc:
        raise MiraxDirectUnsupported(f"{path}: cannot read the position record ({exc})") from exc
    if len(raw) != length:
        raise MiraxDirectUnsupported(f"{path}: truncated: the position record is cut short")
    expected = POSITION_RECORD.size * npositions
    if compressed:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(raw, expected + 1)
        except zlib.error as exc:
            raise MiraxDirectUnsupported(
                f"{path}: cannot inflate StitchingIntensityLayer ({exc})"
            ) from exc
        if not inflater.eof or len(raw) != expected:
            raise MiraxDirectUnsupported(
                f"{path}: StitchingIntensityLayer inflates to {len(raw)} bytes, expected {expected}"
            )
    elif len(raw) != expected:
        raise MiraxDirectUnsupported(
            f"{path}: VIMSLIDE_POSITION_BUFFER has {len(raw)} bytes, expected {expected}"
        )
    positions = []
    for i in range(npositions):
        flag, px, py = POSITION_RECORD.unpack_from(raw, i * POSITION_RECORD.size)
        if flag & 0xFE:
            raise MiraxDirectUnsupported(f"{path}: position {i} has flag {flag}")
        positions.append((px, py))  # times the level-0 concat factor, which must be 1
    return positions


def _build_levels(
    ini: _SlidedatReader, folder: Path
) -> tuple[list[_Level], tuple[int, int, int, int], list[Path]]:
    slide_id = ini.value("GENERAL", "SLIDE_ID")
    images_x = ini.integer("GENERAL", "IMAGENUMBER_X")
    images_y = ini.integer("GENERAL", "IMAGENUMBER_Y")
    ini.integer("GENERAL", "OBJECTIVE_MAGNIFICATION")
    try:
        divisions = ini.integer("GENERAL", "CameraImageDivisionsPerSide")
    except MiraxDirectUnsupported:
        divisions = 1
    if images_x <= 0 or images_y <= 0 or divisions <= 0:
        raise ini.fail("IMAGENUMBER_X/Y and CameraImageDivisionsPerSide must be positive")
    if images_x % divisions or images_y % divisions:
        raise ini.fail(
            f"{images_x}x{images_y} images do not split into camera fields of "
            f"{divisions}x{divisions} (OpenSlide would index past its position table)"
        )

    hier_count = ini.integer("HIERARCHICAL", "HIER_COUNT")
    nonhier_count = ini.integer("HIERARCHICAL", "NONHIER_COUNT")
    if hier_count <= 0 or nonhier_count < 0:
        raise ini.fail("HIER_COUNT must be positive and NONHIER_COUNT non-negative")
    zoom_hier = next(
        (
            i
            for i in range(hier_count)
            if ini.value("HIERARCHICAL", f"HIER_{i}_NAME") == "Slide zoom level"
        ),
        -1,
    )
    if zoom_hier != 0:
        raise ini.fail("the slide zoom level is not HIER_0")
    index_name = ini.value("HIERARCHICAL", "INDEXFILE")
    zoom_levels = ini.integer("HIERARCHICAL", "HIER_0_COUNT")
    if zoom_levels <= 0:
        raise ini.fail("HIER_0_COUNT must be positive")
    section_names = [
        ini.value("HIERARCHICAL", f"HIER_0_VAL_{i}_SECTION") for i in range(zoom_levels)
    ]

    datafile_count = ini.integer("DATAFILE", "FILE_COUNT")
    if datafile_count <= 0:
        raise ini.fail("FILE_COUNT must be positive")
    datafiles = [folder / ini.value("DATAFILE", f"FILE_{i}") for i in range(datafile_count)]

    sections = [_read_level_section(ini, i, name) for i, name in enumerate(section_names)]
    level0 = sections[0]
    if level0.concat_exponent != 0:
        raise ini.fail("level 0 has IMAGE_CONCAT_FACTOR != 0, which this reader does not emulate")
    if level0.image_format not in ("JPEG", "PNG"):
        raise ini.fail(
            f"level 0 images are {level0.image_format}; only JPEG and PNG are decoded here"
        )

    vimslide = _nonhier_offset(ini, nonhier_count, "VIMSLIDE_POSITION_BUFFER")
    stitching = -1
    if vimslide == -1:
        stitching = _nonhier_offset(ini, nonhier_count, "StitchingIntensityLayer")
    have_positions = vimslide != -1 or stitching != -1

    index_path = folder / index_name
    try:
        index = _IndexReader(index_path, index_path.read_bytes())
    except OSError as exc:
        raise MiraxDirectUnsupported(f"{index_path}: cannot read the index ({exc})") from exc
    head = INDEX_VERSION + slide_id.encode("utf-8")
    if not index.data.startswith(INDEX_VERSION):
        raise index.fail("Index.dat doesn't have the expected version")
    if not index.data.startswith(head):
        raise index.fail("Index.dat doesn't have a matching slide identifier")
    hier_root = len(head)
    nonhier_root = hier_root + 4

    positions_x = images_x // divisions
    npositions = positions_x * (images_y // divisions)
    positions = _slide_positions(
        index,
        datafiles,
        nonhier_root,
        vimslide if vimslide != -1 else stitching,
        vimslide == -1 and stitching != -1,
        npositions,
        positions_x,
        level0,
        divisions,
    )

    levels: list[_Level] = []
    params: list[tuple[int, int, int, int]] = []
    total_exponent = 0
    for i, hs in enumerate(sections):
        total_exponent += hs.concat_exponent
        if total_exponent > 30:
            raise ini.fail(f"image concat exponent too large at level {i}")
        concat = 1 << total_exponent
        positions_per_image = max(1, concat // divisions)
        if have_positions or level0.overlap_x != 0 or level0.overlap_y != 0:
            tile_count_divisor = min(concat, divisions)
            tiles_per_image = positions_per_image
            positions_per_tile = 1
        else:
            tile_count_divisor = concat
            tiles_per_image = 1
            positions_per_tile = positions_per_image
        tile_w = hs.image_w / tiles_per_image
        tile_h = hs.image_h / tiles_per_image
        images_per_position = max(1, divisions // concat)
        adv_x = tile_w - hs.overlap_x / images_per_position
        adv_y = tile_h - hs.overlap_y / images_per_position
        if adv_x <= 0 or adv_y <= 0:
            raise ini.fail(f"level {i}: overlap leaves no tile advance")
        levels.append(
            _Level(
                i,
                float(concat),
                hs.image_format,
                hs.image_w,
                hs.image_h,
                tile_w,
                tile_h,
                adv_x,
                adv_y,
                {},
            )
        )
        params.append((concat, tile_count_divisor, tiles_per_image, positions_per_tile))

    active: set[int] = set()
    hier_table = index.i32(hier_root)
    image0_w, image0_h = level0.image_w, level0.image_h
    for i, lv in enumerate(levels):
        concat, tile_count_divisor, tiles_per_image, positions_per_tile = params[i]
        head_at = index.i32(hier_table + 4 * i)
        if index.i32(head_at) != 0:
            raise index.fail(f"zoom level {i}: expected 0 at the list head")
        page = index.i32(head_at + 4)
        while True:
            count, next_page = index.i32(page), index.i32(page + 4)
            if count < 0:
                raise index.fail(f"zoom level {i}: negative page length")
            for k in range(count):
                at = page + 8 + HIER_RECORD.size * k
                image_index, offset, length, fileno = (index.i32(at + 4 * j) for j in range(4))
                if min(image_index, offset, length, fileno) < 0:
                    raise index.fail(f"zoom level {i}: negative value in record {k}")
                x, y = image_index % images_x, image_index // images_x
                if y >= images_y or x % concat or y % concat:
                    raise index.fail(f"zoom level {i}: image index {image_index} is out of place")
                if fileno >= datafile_count:
                    raise index.fail(f"zoom level {i}: record names data file {fileno}")
                image = _Image(fileno, offset, length, i, x, y)
                for yi in range(tiles_per_image):
                    yy = y + yi * divisions
                    if yy >= images_y:
                        break
                    for xi in range(tiles_per_image):
                        xx = x + xi * divisions
                        if xx >= images_x:
                            break
                        xp, yp = xx // divisions, yy // divisions
                        cp = yp * positions_x + xp
                        field_x, field_y = positions[cp]
                        pos0_x = field_x + image0_w * (xx - xp * divisions)
                        pos0_y = field_y + image0_h * (yy - yp * divisions)
                        if i == 0:
                            if field_x == 0 and field_y == 0 and (xp != 0 or yp != 0):
                                continue
                            active.add(cp)
                        elif not any(
                            (ypp * positions_x + xpp) in active
                            for ypp in range(yp, yp + positions_per_tile)
                            for xpp in range(xp, xp + positions_per_tile)
                        ):
                            continue
                        _insert_tile(
                            lv,
                            image,
                            pos0_x / concat,
                            pos0_y / concat,
                            lv.tile_w * xi,
                            lv.tile_h * yi,
                            x // tile_count_divisor + xi,
                            y // tile_count_divisor + yi,
                        )
            if next_page == 0:
                break
            page = next_page

    bounds = _grid_bounds(levels[0])
    for lv in levels:
        lv.unsupported = _level_problem(lv, bounds)
    if levels[0].unsupported is not None:
        raise MiraxDirectUnsupported(f"{ini.path}: level 0: {levels[0].unsupported}")
    return levels, bounds, datafiles


def _insert_tile(
    lv: _Level,
    image: _Image,
    pos_x: float,
    pos_y: float,
    src_x: float,
    src_y: float,
    col: int,
    row: int,
) -> None:
    """insert_tile of the MIRAX reader plus the tilemap grid's add_tile."""
    offset_x = pos_x - col * lv.advance_x
    offset_y = pos_y - row * lv.advance_y
    subtile = lv.image_w > lv.tile_w or lv.image_h > lv.tile_h
    if subtile:
        # read_tile copies a ceil(tile_w) x ceil(tile_h) sub-rectangle; beyond the image
        # it is transparent, which paints nothing.
        sx, sy = int(src_x), int(src_y)
        paint_w = max(0, min(math.ceil(lv.tile_w), lv.image_w - sx))
        paint_h = max(0, min(math.ceil(lv.tile_h), lv.image_h - sy))
    else:
        sx = sy = 0
        paint_w, paint_h = lv.image_w, lv.image_h
    lv.tiles[(col, row)] = _Tile(offset_x, offset_y, image, sx, sy, paint_w, paint_h)
    if offset_x < 0:
        lv.extra_right = max(lv.extra_right, math.ceil(-offset_x / lv.advance_x))
    right_overhang = offset_x + (lv.tile_w - lv.advance_x)
    if right_overhang > 0:
        lv.extra_left = max(lv.extra_left, math.ceil(right_overhang / lv.advance_x))
    if offset_y < 0:
        lv.extra_bottom = max(lv.extra_bottom, math.ceil(-offset_y / lv.advance_y))
    bottom_overhang = offset_y + (lv.tile_h - lv.advance_y)
    if bottom_overhang > 0:
        lv.extra_top = max(lv.extra_top, math.ceil(bottom_overhang / lv.advance_y))


def _grid_bounds(lv: _Level) -> tuple[int, int, int, int]:
    """`openslide.bounds-*` from the level-0 tilemap (_openslide_set_bounds_props_from_grid)."""
    if not lv.tiles:
        return 0, 0, 0, 0
    left = min(col * lv.advance_x + t.offset_x for (col, _), t in lv.tiles.items())
    top = min(row * lv.advance_y + t.offset_y for (_, row), t in lv.tiles.items())
    right = max(col * lv.advance_x + t.offset_x + lv.tile_w for (col, _), t in lv.tiles.items())
    bottom = max(row * lv.advance_y + t.offset_y + lv.tile_h for (_, row), t in lv.tiles.items())
    width, height = right - left, bottom - top
    return (
        math.floor(left),
        math.floor(top),
        math.ceil(left + width) - math.floor(left),
        math.ceil(top + height) - math.floor(top),
    )


def _level_problem(lv: _Level, bounds: tuple[int, int, int, int]) -> str | None:
    """Why this level is not a plain paste for bounds-aligned reads, or None."""
    if lv.image_format not in ("JPEG", "PNG"):
        return f"{lv.image_format} images are not decoded here"
    if not ((lv.advance_x * _DYADIC).is_integer() and (lv.advance_y * _DYADIC).is_integer()):
        return (
            f"tile advance {lv.advance_x}x{lv.advance_y} is not a multiple of 1/{_DYADIC}, "
            "so OpenSlide's placement arithmetic is not exact"
        )
    subtile = lv.image_w > lv.tile_w or lv.image_h > lv.tile_h
    if subtile and not (lv.tile_w.is_integer() and lv.tile_h.is_integer()):
        return f"images split into fractional {lv.tile_w}x{lv.tile_h} sub-tiles"
    origin_x = bounds[0] / lv.downsample
    origin_y = bounds[1] / lv.downsample
    for (col, row), tile in lv.tiles.items():
        px = col * lv.advance_x + tile.offset_x
        py = row * lv.advance_y + tile.offset_y
        if not ((px - origin_x).is_integer() and (py - origin_y).is_integer()):
            return (
                f"image ({tile.image.x}, {tile.image.y}) sits at ({px}, {py}), not a whole "
                f"number of level pixels from the bounds origin, so OpenSlide resamples it"
            )
    return None
