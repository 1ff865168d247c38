"""The reader: level regions painted from the tile map in OpenSlide's order, with the cache."""

from __future__ import annotations

import math
import operator
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from bms_pipeline.core.mirax.direct.cache import CacheEntry, CacheStats, ImageCache
from bms_pipeline.core.mirax.direct.decoding import decode_image_bgra
from bms_pipeline.core.mirax.direct.errors import MiraxDirectError, MiraxDirectUnsupported
from bms_pipeline.core.mirax.direct.tile_map import (
    Level,
    SlidedatReader,
    StoredImage,
    build_levels,
)
from bms_pipeline.core.mirax.format import SLIDEDAT
from bms_pipeline.core.mirax.inventory import SlideError, read_slidedat

_READ_PIECE = 4096  # openslide_read_region paints at most 4096 x 4096 pixels at a time

_Paint = tuple[int, int, int, int, int]
"""A tile to paste: image number, source x and y in the image, destination x and y."""


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
        levels: list[Level],
        bounds: tuple[int, int, int, int],
        cache_bytes: int,
    ) -> None:
        self._path = mrxs_path
        self._datafiles = datafiles
        self._levels = levels
        self._bounds = bounds
        self._cache = ImageCache(cache_bytes)
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
        ini = SlidedatReader(slidedat_path, sections)
        levels, bounds, datafiles = build_levels(ini, folder)
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

    def _paint_piece(self, lv: Level, view: np.ndarray, x: int, y: int, w: int, h: int) -> None:
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
        # The tiles of the requested range that exist, in raster order; cells outside the
        # map hold none.
        rows_n, cols_n = lv.grid.shape
        r0, r1 = max(start_y, 0), min(end_y, rows_n)
        c0, c1 = max(start_x, 0), min(end_x, cols_n)
        if r0 >= r1 or c0 >= c1:
            return
        block = lv.grid[r0:r1, c0:c1]
        at_rows, at_cols = np.nonzero(block >= 0)
        numbers = block[at_rows, at_cols]
        found = zip(
            (at_rows + r0).tolist(),
            (at_cols + c0).tolist(),
            lv.tile_dx[numbers].tolist(),
            lv.tile_dy[numbers].tolist(),
            lv.tile_image[numbers].tolist(),
            lv.tile_src_x[numbers].tolist(),
            lv.tile_src_y[numbers].tolist(),
            strict=True,
        )
        # Forward raster order with overwrite == OpenSlide's reverse order with SATURATE.
        paints: list[_Paint] = []
        for row, col, offset_x, offset_y, image, src_x, src_y in found:
            px = col * adv_x + offset_x
            py = row * adv_y + offset_y
            if px + tile_w <= rx or py + tile_h <= ry or px >= rx + w or py >= ry + h:
                continue
            dest_x = (((col - start_x) * adv_x - region_off_x) + base_x) + offset_x
            dest_y = (((row - start_y) * adv_y - region_off_y) + base_y) + offset_y
            if not (dest_x.is_integer() and dest_y.is_integer()):
                stored = lv.image(image)
                raise MiraxDirectUnsupported(
                    f"{self._path}: level {lv.index}: read at ({x}, {y}) would place "
                    f"image ({stored.x}, {stored.y}) at the fractional offset "
                    f"({dest_x}, {dest_y}), which OpenSlide resamples"
                )
            paints.append((image, src_x, src_y, int(dest_x), int(dest_y)))
        if not paints:
            return
        pinned: dict[tuple[int, int], CacheEntry] = {}
        try:
            self._paste(lv, view, paints, pinned)
        finally:
            for entry in pinned.values():
                self._cache.release(entry)

    def _paste(
        self,
        lv: Level,
        view: np.ndarray,
        paints: list[_Paint],
        pinned: dict[tuple[int, int], CacheEntry],
    ) -> None:
        surface_h, surface_w = view.shape[:2]
        needed: dict[tuple[int, int], StoredImage] = {}
        carries: set[tuple[int, int]] = set()
        copies: list[tuple[tuple[int, int], int, int, int, int, int, int]] = []
        for number, src_x, src_y, dx, dy in paints:
            paint_w, paint_h = lv.paint_size(src_x, src_y)
            x0, y0 = max(dx, 0), max(dy, 0)
            x1 = min(dx + paint_w, surface_w)
            y1 = min(dy + paint_h, surface_h)
            if x0 >= x1 or y0 >= y1:
                continue
            image = lv.image(number)
            key = (image.fileno, image.offset)
            needed.setdefault(key, image)
            if dy - src_y + lv.image_h > surface_h:
                carries.add(key)  # the image reaches below this read: the next row reads it
            copies.append((key, x0, y0, x1, y1, src_x + x0 - dx, src_y + y0 - dy))
        # Decode what no other thread is decoding first, then wait for the rest: threads
        # on neighbouring tiles share images, and waiting in painting order would make
        # them take turns instead of decoding side by side.
        shape = (lv.image_h, lv.image_w, 4)
        deferred: list[tuple[int, int]] = []
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

    def _loader(self, lv: Level, image: StoredImage) -> Callable[[np.ndarray | None], np.ndarray]:
        return lambda spare: self._decode(lv, image, spare)

    def _decode(self, lv: Level, image: StoredImage, spare: np.ndarray | None) -> np.ndarray:
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
