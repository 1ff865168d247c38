"""A subclassed wsidicomizer OpenSlide source: direct MIRAX reads, cheaper compositing.

wsidicomizer composites every tile OpenSlide returns over the background in int32 numpy
arithmetic, which profiles as the largest single cost of converting a MIRAX slide (about
12 ms of a 16 ms tile). Here opaque pixels keep their RGB, transparent ones take the
background and only partly transparent ones are blended, in uint16 with the same
rounding, so the output is bit-identical to wsidicomizer's.

The pixels themselves come from `MiraxDirectReader` where it reproduces OpenSlide exactly
(level 0, and every level whose images land on whole pixels): it decodes each stored
camera image once into a shared cache, where OpenSlide's `read_region` (62 % of the
conversion's CPU after the compositing fix) re-assembles every tile through its own
cache and premultiplied-ARGB painting. Other levels and reads go through OpenSlide.
Which reader served each level, and why one fell back, is recorded in a `ReaderLog`
(`recording_reads`), which the conversion result and `sm_series` metadata show.

wsidicomizer and OpenSlide offer no public hook for any of this: every private name it needs
is wrapped in `core.dicom.wsidicomizer_seam`, and this module uses only that module's public
surface and the libraries' public interfaces.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import numpy as np
from imagecodecs import JPEG8, jpeg8_encode
from openslide import OpenSlideCache
from wsidicom.codec import Encoder, JpegSettings, Settings  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.codec.settings import Channels  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.errors import WsiDicomNotFoundError  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.geometry import Point, Region, Size, SizeMm  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata import ImageCoordinateSystem  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.image_data import BaseDicomizerImageData  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.sources.openslide_like.openslide_like_image_data import (  # pyright: ignore[reportMissingTypeStubs]
    OpenSlideLikeSingleImageData,
)

from bms_pipeline.core.dicom.region_reader import ReadRefused, RegionReader, open_mirax_reader
from bms_pipeline.core.dicom.thumbnail import render_thumbnail
from bms_pipeline.core.dicom.wsidicomizer_seam import (
    OpenSlideLevel,
    OpenSlideSourceSeam,
    ReleasableOpenSlide,
    holding_open,
    unpremultiply_to_rgba,
)
from bms_pipeline.core.heap import release_freed_heap

logger = logging.getLogger(__name__)


CACHE_CAP_BYTES = 320 << 20
"""The most either decoded-image cache may hold, whatever the slide's width: at 190,000 px
(the widest BMDeep slides) a row of the camera images that two 1024 px tile rows share
fits, so every image is decoded once; wider slides decode the rest of that row twice."""


def decoded_image_cache_bytes(
    level_width: int, tile_size: int = 512, floor: int = 96 << 20, cap: int | None = None
) -> int:
    """A decoded-image cache for raster reads of a level `level_width` pixels wide: a tile
    row's height of BGRA across it, within `floor` and `cap`.

    wsidicom reads tiles row by row; camera images that straddle two tile rows are read
    by both, so a cache that cannot hold them until the next row decodes them twice
    (OpenSlide's default 32 MiB cache does so on any slide wider than ~10,000 px). The
    direct reader's cache keeps exactly those (`mirax.direct.cache.ImageCache`), which are at
    most an image row; a tile row's height leaves room for the images of the tiles in
    flight.
    """
    return min(max(floor, level_width * tile_size * 4), CACHE_CAP_BYTES if cap is None else cap)


def composite_over_background(
    rgba: np.ndarray, background: tuple[int, int, int] | int
) -> np.ndarray:
    """RGB of `rgba` over `background`, bit-exact with Pillow's paste-with-mask blend
    (`(src * a + bg * (255 - a) + 127) // 255`).

    OpenSlide's MIRAX pixels are opaque (alpha 255: the RGB is kept) or unscanned (alpha 0:
    the background); only the rare pixels in between, at fractional field edges, are
    blended, so a tile costs a channel copy and two masks instead of int32 arithmetic.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    bg = np.broadcast_to(np.asarray(background, dtype=np.uint16), (3,))
    # Fill transparent pixels a whole pixel (uint32) at a time: much cheaper than a
    # per-channel masked assignment. The copy keeps the caller's array untouched.
    work = np.array(rgba, dtype=np.uint8, order="C", copy=True)
    fill = np.frombuffer(bytes([*bg.astype(np.uint8).tolist(), 255]), dtype=np.uint32)[0]
    np.copyto(work.view(np.uint32)[..., 0], fill, where=alpha == 0)
    rgb = np.ascontiguousarray(work[..., :3])
    partial = (alpha != 0) & (alpha != 255)
    if partial.any():
        a = alpha[partial][:, None].astype(np.uint16)
        # src*a + bg*(255-a) <= 255*255, so +127 still fits in uint16.
        mixed = rgba[..., :3][partial].astype(np.uint16) * a + bg * (255 - a) + 127
        # x // 255 without a division: (x + 1 + (x >> 8)) >> 8, exact for 0 <= x <= 65534
        # (here x <= 255 * 255 + 127).
        rgb[partial] = ((mixed + 1 + (mixed >> 8)) >> 8).astype(np.uint8)
    return rgb


@dataclass(frozen=True)
class LevelReads:
    """Which reader served one pyramid level (OpenSlide's level index) of a conversion."""

    level: int
    width: int
    height: int
    reader: Literal["direct", "openslide", "direct+openslide"]
    direct_reads: int
    openslide_reads: int
    reason: str | None
    """Why (some) reads went through OpenSlide; None when all were direct."""

    def summary(self) -> dict[str, object]:
        return {
            "level": self.level,
            "size": [self.width, self.height],
            "reader": self.reader,
            "direct_reads": self.direct_reads,
            "openslide_reads": self.openslide_reads,
            "fell_back_because": self.reason,
        }


@dataclass
class _LevelCounter:
    width: int
    height: int
    reason: str | None = None
    direct: int = 0
    fallback: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, direct: bool, reason: str | None = None) -> None:
        with self.lock:  # tiles are read from wsidicom's worker threads
            if direct:
                self.direct += 1
            else:
                self.fallback += 1
                self.reason = self.reason or reason


class ReaderLog:
    """Per level, how many reads the direct MIRAX reader served and how many OpenSlide, and
    the first reason a level or read fell back. `note`: a reason that holds for every level
    (the direct reader is turned off), else the reason it did not open for the slide."""

    def __init__(self, note: str | None = None) -> None:
        self.note = note
        self.written_levels: frozenset[int] | None = None
        """OpenSlide's indices of the levels the conversion writes (None: all): wsidicomizer
        makes a level for every one OpenSlide has, and only these are read."""
        self._levels: dict[int, _LevelCounter] = {}
        self.openslide_handle: OpenSlideHandleUse | None = None
        """What became of the OpenSlide handle while the tiles were written (None: no
        source recorded here)."""

    def level(self, index: int, width: int, height: int, reason: str | None) -> _LevelCounter:
        counter = self._levels.setdefault(index, _LevelCounter(width, height))
        counter.reason = counter.reason or reason or self.note
        return counter

    def levels(self) -> tuple[LevelReads, ...]:
        """The levels something was read from, from the base up."""
        out: list[LevelReads] = []
        for index in sorted(self._levels):
            c = self._levels[index]
            if c.direct + c.fallback == 0:
                continue
            reader: Literal["direct", "openslide", "direct+openslide"] = (
                "direct" if not c.fallback else "openslide" if not c.direct else "direct+openslide"
            )
            reason = (c.reason or self.note) if c.fallback else None
            out.append(LevelReads(index, c.width, c.height, reader, c.direct, c.fallback, reason))
        return tuple(out)


class OpenSlideHandleUse:
    """Releases a conversion's OpenSlide handle once the levels read through OpenSlide have
    had every tile read: OpenSlide keeps the slide's whole tile map while it is open (about
    124 MiB of a 1 GiB job for a full-height BMDeep slide, growing with the height), and
    wsidicom writes the levels side by side, so the small levels the direct reader does not
    serve finish long before level 0 (`before_first_tile` reads them first). With every level
    direct, the handle goes at the first tile (the THUMBNAIL and the overview are read
    before). A read the direct reader refuses afterwards opens it again
    (`ReleasableOpenSlide`); a level whose tiles were read more often than it has only
    releases the handle early, which costs such a reopen, never a wrong pixel."""

    def __init__(self, slide: ReleasableOpenSlide) -> None:
        self.slide = slide
        self._lock = threading.Lock()
        self._remaining = 0
        self._released = False
        self._levels: list[FastOpenSlideLevelImageData] = []
        self._first_tile_lock = threading.Lock()
        self._first_tile_done = False
        self.read_ahead = 0
        """Tiles of the OpenSlide levels encoded before the writing began."""

    def count_openslide_level(self, level: FastOpenSlideLevelImageData) -> None:
        """A level read through OpenSlide, all of whose tiles will be read."""
        with self._lock:
            self._levels.append(level)
            self._remaining += level.tiled_size.area

    def before_first_tile(self) -> None:
        """At the first tile the conversion asks for (the writing begins): when the levels
        read through OpenSlide are small (at most `READ_AHEAD_TILES` tiles; level 4 of a
        full-height BMDeep slide has 336), encode them all now, on two threads, so that
        OpenSlide is released before the direct reader's cache fills instead of beside it
        (the job's memory peaked there: 1,114 MiB, against 845 after the release)."""
        if self._first_tile_done:
            return
        with self._first_tile_lock:
            if self._first_tile_done:
                return
            tiles = [
                (level, Point(x, y))
                for level in self._levels
                for y in range(level.tiled_size.height)
                for x in range(level.tiled_size.width)
            ]
            if 0 < len(tiles) <= READ_AHEAD_TILES:
                from concurrent.futures import ThreadPoolExecutor

                def encode(job: tuple[FastOpenSlideLevelImageData, Point]) -> None:
                    level, tile = job
                    level.keep_encoded(tile, level.encode_tile(tile))

                with ThreadPoolExecutor(2, thread_name_prefix="OpenSlideReadAhead") as pool:
                    list(pool.map(encode, tiles))
                self.read_ahead = len(tiles)
            self._first_tile_done = True

    def tile_read(self, through_openslide_level: bool) -> None:
        """A tile was read (of a level read through OpenSlide, or else a direct level)."""
        with self._lock:
            if through_openslide_level:
                self._remaining -= 1
            if self._released or self._remaining > 0:
                return
            self._released = True
        if self.slide.release():
            release_freed_heap()

    def summary(self) -> dict[str, object]:
        return {
            "released_while_writing": self.slide.releases > 0,
            "reopened": self.slide.opens - 1,
            "tiles_read_ahead": self.read_ahead,
        }


READ_AHEAD_TILES = 512
"""The most tiles of OpenSlide levels encoded ahead (about 0.2 MB each at 1024 px, so at most
about 100 MB held, less than the direct reader's cache that fills after them)."""


class PeriodicHeapTrim:
    """`release_freed_heap` every `every` tiles written.

    The encoded tiles (100-200 KB each, of varying size) and the decoded camera images that
    the cache evicts are allocated by wsidicom's worker threads, each in a glibc arena of
    its own, and the free space they leave is reused only in part. Trimming now and then
    gives those pages back (a few milliseconds each time). Most of the creep of a
    full-height conversion (1.4 KiB a tile) was wsidicom's futures, not this
    (`ConversionSettings.chunk_size`); this trim's own share was not measured apart."""

    def __init__(self, every: int = 2048) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._tiles = 0

    def tile_written(self) -> None:
        with self._lock:
            self._tiles += 1
            due = self._tiles % self._every == 0
        if due:
            release_freed_heap()


_READER_LOG: ContextVar[ReaderLog | None] = ContextVar("bms_reader_log", default=None)


@contextmanager
def recording_reads(log: ReaderLog) -> Generator[ReaderLog]:
    """Sources opened in this block (in this thread) record their reads in `log`."""
    token = _READER_LOG.set(log)
    try:
        yield log
    finally:
        _READER_LOG.reset(token)


def _short(reason: object, path: Path) -> str:
    """A fallback reason without the folder of the slide (the file names stay)."""
    return str(reason).replace(f"{path.parent}/", "")


_JPEG_COLORSPACES = {Channels.YBR: JPEG8.CS.YCbCr, Channels.RGB: JPEG8.CS.RGB}


class FastOpenSlideLevelImageData(OpenSlideLevel):
    """Encodes tiles itself, opaque ones straight from OpenSlide's buffer.

    OpenSlide fills a uint32 ARGB buffer, which on a little-endian machine is BGRA bytes;
    libjpeg-turbo reads BGRA itself (`JCS_EXT_BGRA`) and writes the same JPEG as from RGB,
    so an opaque tile needs no channel swap, no copy and no compositing. Tiles with any
    transparency take wsidicomizer's path (with the cheaper compositing below).
    """

    _direct: RegionReader | None = None
    _reads: _LevelCounter | None = None
    _slide_path: Path = Path()
    _blank_tile: tuple[Size, bytes] | None = None
    _handle_use: OpenSlideHandleUse | None = None
    _heap_trim: PeriodicHeapTrim | None = None
    _ahead: dict[tuple[int, int], tuple[int, int]]
    """Tiles encoded ahead: (offset, length) in `_ahead_file`."""
    _ahead_file: IO[bytes] | None = None
    _ahead_lock: threading.Lock

    def __init__(self, source: OpenSlideSourceSeam, level_index: int) -> None:
        super().__init__(source, level_index)
        self._ahead = {}
        self._ahead_lock = threading.Lock()

    def trim_heap_with(self, trim: PeriodicHeapTrim) -> None:
        """Report each tile written to `trim`, shared by the source's levels."""
        self._heap_trim = trim

    def count_reads_in(self, handle_use: OpenSlideHandleUse) -> None:
        """Report each tile read to `handle_use`, which releases OpenSlide when it can."""
        self._handle_use = handle_use
        if self._direct is None:
            handle_use.count_openslide_level(self)

    def keep_encoded(self, tile: Point, data: bytes) -> None:
        """Keep tile `tile` encoded until wsidicom asks for it (once), in an unnamed
        temporary file: held in memory, the 336 tiles of level 4 of a full-height slide
        (about 57 MB) were still there while the direct reader's cache filled."""
        with self._ahead_lock:
            if self._ahead_file is None:
                # Closed once its last tile is taken; unnamed, so nothing stays on disk.
                self._ahead_file = tempfile.TemporaryFile(prefix="bms-read-ahead-")  # noqa: SIM115
            spill = self._ahead_file
            offset = spill.seek(0, os.SEEK_END)
            spill.write(data)
            self._ahead[(int(tile.x), int(tile.y))] = (offset, len(data))

    def _take_encoded(self, tile: Point) -> bytes | None:
        """Tile `tile` if it was encoded ahead (then forgotten), else None."""
        with self._ahead_lock:
            where = self._ahead.pop((int(tile.x), int(tile.y)), None)
            spill = self._ahead_file
            if where is None or spill is None:
                return None
            spill.seek(where[0])
            data = spill.read(where[1])
            if not self._ahead:
                spill.close()
                self._ahead_file = None
            return data

    def attach_direct_reader(
        self,
        reader: RegionReader | None,
        log: ReaderLog | None = None,
        why_not: str | None = None,
        slide_path: Path | None = None,
    ) -> None:
        """Read this level's pixels with `reader` where it supports the level; count the
        reads in `log` (`why_not`: why there is no reader for the slide)."""
        self._direct = (
            reader if reader is not None and reader.supports_level(self.level_index) else None
        )
        self._slide_path = slide_path or Path()
        if log is not None:
            reason = (
                _short(reader.unsupported_reason(self.level_index), self._slide_path)
                if reader is not None and self._direct is None
                else why_not
            )
            width, height = self._osr_level_size()
            self._reads = log.level(self.level_index, width, height, reason)

    def _osr_level_size(self) -> tuple[int, int]:
        size = self.image_size
        return int(size.width), int(size.height)

    def composite(self, rgba: np.ndarray) -> np.ndarray:
        """wsidicomizer's compositing, bit for bit, cheaper (`composite_over_background`);
        wsidicomizer's own reads of this level use it too."""
        return composite_over_background(rgba, self.blank_color)

    def _blank_encoded_tile(self) -> bytes:
        """A tile of the background colour, encoded once per level (as wsidicomizer's
        blank frame: the colour filled in RGB and given to the level's encoder)."""
        size = self.tile_size
        cached = self._blank_tile
        if cached is None or cached[0] != size:
            frame = np.full((size.height, size.width, 3), self.blank_color, dtype=np.uint8)
            cached = self._blank_tile = (size, self.encoder.encode(frame))
        return cached[1]

    @property
    def transcoder(self) -> Encoder[Settings] | None:
        """None when tiles are encoded here, so wsidicom asks for encoded tiles (its
        passthrough path) instead of decoded ones to encode itself."""
        return None if self._direct_jpeg() is not None else super().transcoder

    def _direct_jpeg(self) -> tuple[int, str | None, int] | None:
        settings = self.encoder.settings
        if (
            sys.byteorder != "little"
            or not isinstance(settings, JpegSettings)
            or settings.bits != 8
            or settings.channels not in _JPEG_COLORSPACES
        ):
            return None
        subsampling = settings.subsampling.name.lstrip("R") if settings.subsampling else None
        return settings.quality, subsampling, _JPEG_COLORSPACES[settings.channels]

    def _is_blank(self, pixels: np.ndarray) -> bool:
        """wsidicomizer's `_detect_blank_tile` on the BGRA words, without its fancy indexing
        (a quarter of a millisecond per tile): all transparent, or every pixel's first three
        bytes equal to the blank colour (compared in the same byte order as wsidicomizer, so
        the same tiles come out blank)."""
        corners = (int(pixels[0, 0]), int(pixels[0, -1]), int(pixels[-1, 0]), int(pixels[-1, -1]))
        if not any(c >> 24 for c in corners) and not (pixels >> 24).any():
            return True
        color = self.blank_color
        r, g, b = (color, color, color) if isinstance(color, int) else color
        low = r | g << 8 | b << 16
        if any(c & 0xFFFFFF != low for c in corners):
            return False
        return bool(((pixels & 0xFFFFFF) == low).all())

    def _fill_transparent(self, pixels: np.ndarray) -> bool:
        """Give the transparent pixels of a tile without partly transparent ones the
        background, in place, as an opaque BGRA word; False (nothing changed) if a pixel is
        partly transparent.

        That is what wsidicomizer's path makes of such a tile (alpha 255 keeps its RGB,
        alpha 0 takes the background: `composite_over_background`), so the tile can be
        encoded from BGRA like an opaque one, without the channel swap, the compositing
        and the encoder's two copies. The direct reader only ever returns alpha 0 or 255;
        OpenSlide's placement at fractional positions gives the partly transparent pixels.
        """
        transparent = pixels < 0x01000000
        if np.count_nonzero(pixels < 0xFF000000) != np.count_nonzero(transparent):
            return False
        color = self.blank_color
        r, g, b = (color, color, color) if isinstance(color, int) else color
        np.copyto(pixels, np.uint32(b | g << 8 | r << 16 | 0xFF000000), where=transparent)
        return True

    def _read_bgra(self, region: Region) -> np.ndarray:
        """OpenSlide's premultiplied pixels of `region` as an (h, w, 4) BGRA array."""
        if self._direct is not None:
            x, y = self.base_location(region)
            try:
                pixels = self._direct.read_bgra(
                    self.level_index, x, y, region.size.width, region.size.height
                )
            except ReadRefused as exc:
                # A read the direct reader cannot reproduce exactly: OpenSlide's own.
                if self._reads is not None:
                    self._reads.count(False, _short(exc, self._slide_path))
            else:
                if self._reads is not None:
                    self._reads.count(True)
                return pixels
        elif self._reads is not None:
            self._reads.count(False)
        return self.read_openslide_bgra(region)

    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        direct = self._direct_jpeg()
        if direct is None:
            return super().get_encoded_tile(tile, z, path)
        if z not in self.focal_planes:
            raise WsiDicomNotFoundError(f"focal plane {z}", str(self))
        if path not in self.optical_paths:
            raise WsiDicomNotFoundError(f"optical path {path}", str(self))
        if self._handle_use is not None:
            self._handle_use.before_first_tile()
        if self._ahead:
            data = self._take_encoded(tile)
            if data is not None:
                return data
        return self.encode_tile(tile)

    def encode_tile(self, tile: Point) -> bytes:
        """Tile `tile` read and encoded (what `get_encoded_tile` returns, on the direct
        JPEG path)."""
        direct = self._direct_jpeg()
        if direct is None:  # wsidicomizer's encoder path
            return super().get_encoded_tile(tile, self.focal_planes[0], self.optical_paths[0])
        bgra = self._read_bgra(Region(tile * self.tile_size, self.tile_size))
        if self._handle_use is not None:
            self._handle_use.tile_read(self._direct is None)
        if self._heap_trim is not None:
            self._heap_trim.tile_written()
        pixels = bgra.view(np.uint32)[..., 0]
        if self._is_blank(pixels):
            return self._blank_encoded_tile()
        # Opaque means every uint32 pixel (A in the top byte) is at least 0xFF000000.
        if pixels.min() < 0xFF000000 and not self._fill_transparent(pixels):
            return self.encoder.encode(self.composite(unpremultiply_to_rgba(bgra)))
        quality, subsampling, colorspace = direct
        return bytes(
            jpeg8_encode(
                bgra,
                level=quality,
                subsampling=subsampling,
                colorspace=JPEG8.CS.EXT_BGRA,
                outcolorspace=colorspace,
            )
        )


class PyramidThumbnailImageData(OpenSlideLikeSingleImageData):
    """A THUMBNAIL rendered from the converted region of the pyramid (see `core.dicom.thumbnail`),
    with the pixel spacing of its own size and the pyramid's coordinate system."""

    def __init__(
        self,
        pixels: np.ndarray,
        blank_color: int | tuple[int, int, int] | None,
        encoder: Encoder[Settings],
        base_spacing: SizeMm,
        bounds_size: tuple[int, int],
        image_coordinate_system: ImageCoordinateSystem | None,
    ) -> None:
        from PIL import Image as PilImage

        # wsidicomizer annotates `encoder` as a bare generic `Encoder`.
        super().__init__(PilImage.fromarray(pixels), blank_color, encoder)  # pyright: ignore[reportUnknownMemberType]
        height, width = pixels.shape[:2]
        self._pixel_spacing = SizeMm(
            base_spacing.width * bounds_size[0] / width,
            base_spacing.height * bounds_size[1] / height,
        )
        self._imaged_size = SizeMm(
            base_spacing.width * bounds_size[0], base_spacing.height * bounds_size[1]
        )
        self._image_coordinate_system = image_coordinate_system

    @property
    def image_coordinate_system(self) -> ImageCoordinateSystem | None:
        return self._image_coordinate_system

    @property
    def pixel_spacing(self) -> SizeMm:
        return self._pixel_spacing

    @property
    def imaged_size(self) -> SizeMm:
        return self._imaged_size


class FastOpenSlideSource(OpenSlideSourceSeam):
    """wsidicomizer's OpenSlide source, with `FastOpenSlideLevelImageData` for the levels and,
    for MIRAX, the direct MIRAX reader (a `RegionReader`) beside the OpenSlide handle."""

    direct_mirax: ClassVar[bool] = True
    _direct: RegionReader | None = None
    _why_not_direct: str | None = None
    _slide_path: Path = Path()

    def __init__(self, filepath: Any, *args: Any, **kwargs: Any) -> None:
        # wsidicomizer annotates `encoder` as a bare generic `Encoder`.
        super().__init__(filepath, *args, **kwargs)  # pyright: ignore[reportUnknownMemberType]
        self._handle_use = OpenSlideHandleUse(self.make_slide_releasable())
        self._heap_trim = PeriodicHeapTrim()
        self._reader_log = _READER_LOG.get()
        if self._reader_log is not None:
            self._reader_log.openslide_handle = self._handle_use
        tile_size = self.requested_tile_size or 512
        path = self._slide_path = Path(str(filepath))
        if not self.direct_mirax:
            self._why_not_direct = "the direct MIRAX reader is turned off"
        elif path.suffix.lower() != ".mrxs":
            self._why_not_direct = "not a MIRAX slide"
        else:
            try:
                self._direct = open_mirax_reader(
                    path, decoded_image_cache_bytes(self.slide.dimensions[0], tile_size)
                )
            except ReadRefused as exc:
                logger.info("reading %s through OpenSlide: %s", path, exc)
                self._why_not_direct = (
                    f"the direct reader does not open the slide: {_short(exc, path)}"
                )
        self.slide.set_cache(OpenSlideCache(self.openslide_cache_bytes(tile_size)))

    def openslide_cache_bytes(self, tile_size: int) -> int:
        """OpenSlide's cache, sized for the widest level it serves (those the direct reader
        does not, and the THUMBNAIL's read of a small level): a row-sized cache for level 0
        would only duplicate the direct reader's."""
        direct = self._direct
        widths = [
            width
            for level, (width, _) in enumerate(self.slide.level_dimensions)
            if direct is None or not direct.supports_level(level)
        ]
        if not widths:
            return 32 << 20  # OpenSlide's default: the THUMBNAIL and stray reads only
        return decoded_image_cache_bytes(max(widths), tile_size, floor=32 << 20)

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        super().close()

    def overview_image_data(self) -> BaseDicomizerImageData | None:
        """The slide preview, with the nominal pixel spacing of core/dicom/viewer_compat.py."""
        from bms_pipeline.core.dicom.viewer_compat import NominalSpacingOverviewImageData

        image = self.macro_image()
        if image is None:
            return None
        overview = self.metadata.overview
        system = overview.image.image_coordinate_system if overview and overview.image else None
        return NominalSpacingOverviewImageData(
            image, self.background, self.encoder, image_coordinate_system=system
        )

    def thumbnail_image_data(self) -> BaseDicomizerImageData | None:
        """The converted region of the pyramid, never the MIRAX preview (which may cover
        another region, or be absent)."""
        image = self.metadata.pyramid.image
        if image.pixel_spacing is None:
            raise ValueError("no pixel spacing: give one in the metadata to make a THUMBNAIL")
        x, y, width, height = self.converted_region
        color = self.background if self.background is not None else 255
        background = (color, color, color) if isinstance(color, int) else color
        with holding_open(self.slide):
            pixels = render_thumbnail(self.slide, (x, y, width, height), background)
        return PyramidThumbnailImageData(
            pixels,
            color,
            self.encoder,
            image.pixel_spacing,
            (width, height),
            image.image_coordinate_system,
        )

    def level_image_data(self, level_index: int) -> BaseDicomizerImageData:
        image_data = FastOpenSlideLevelImageData(self, level_index)
        image_data.attach_direct_reader(
            self._direct, self._reader_log, self._why_not_direct, self._slide_path
        )
        image_data.trim_heap_with(self._heap_trim)
        log = self._reader_log
        written = log is None or log.written_levels is None or level_index in log.written_levels
        if self._direct is not None and written:
            # Without the direct reader every read goes through OpenSlide: nothing to release.
            image_data.count_reads_in(self._handle_use)
        return image_data


class OpenSlideReadSource(FastOpenSlideSource):
    """`FastOpenSlideSource` with every pixel read through OpenSlide (no direct reader)."""

    direct_mirax = False
