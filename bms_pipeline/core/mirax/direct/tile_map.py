"""OpenSlide 4's MIRAX tile map, rebuilt from Slidedat.ini, Index.dat and the camera positions."""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bms_pipeline.core.mirax.direct.errors import MiraxDirectUnsupported
from bms_pipeline.core.mirax.format import POSITION_RECORD, IndexDat

_DYADIC = 256  # advances must be multiples of 1/256 so float sums stay exact
_FORMATS = frozenset({"JPEG", "PNG", "BMP24"})  # parse_image_format of OpenSlide
_POSITION_DTYPE = np.dtype([("flag", "u1"), ("x", "<i4"), ("y", "<i4")])  # POSITION_RECORD


@dataclass(frozen=True, slots=True)
class StoredImage:
    """One stored camera image, made on demand from a level's arrays."""

    fileno: int
    offset: int
    length: int
    level: int
    x: int  # level-0 image index, for messages
    y: int


@dataclass
class Level:
    """One level's tile map, held in numpy arrays rather than an object per tile.

    A full-height BMDeep slide has about 600,000 stored images; as Python objects (a
    tile, its image and the dict entry) they took about 650 bytes each, 375 MiB, and grew
    the converter's peak memory with the slide's height. Here a tile costs 28 bytes, an
    image 16 and a grid cell 4. `grid[row, col]` is the number of the tile at (col, row),
    -1 where there is none; tile `t` is the sub-rectangle (`tile_src_x[t]`,
    `tile_src_y[t]`) of image `tile_image[t]`, placed at `col * advance + tile_d*[t]`.
    """

    index: int
    downsample: float
    image_format: str
    image_w: int
    image_h: int
    tile_w: float
    tile_h: float
    advance_x: float
    advance_y: float
    images_x: int  # level-0 images per row, to name an image by its (x, y) in messages
    grid: np.ndarray = field(default_factory=lambda: np.full((0, 0), -1, np.int32))
    tile_dx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    tile_dy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    tile_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tile_src_x: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tile_src_y: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    image_fileno: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    image_offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    image_length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    extra_left: int = 0
    extra_right: int = 0
    extra_top: int = 0
    extra_bottom: int = 0
    unsupported: str | None = None

    @property
    def subtile(self) -> bool:
        """Images split into several tiles (higher levels with camera positions)."""
        return self.image_w > self.tile_w or self.image_h > self.tile_h

    def paint_size(self, src_x: int, src_y: int) -> tuple[int, int]:
        """Painted size of a tile whose sub-rectangle starts at (src_x, src_y): read_tile
        copies a ceil(tile_w) x ceil(tile_h) sub-rectangle; beyond the image it is
        transparent, which paints nothing."""
        if not self.subtile:
            return self.image_w, self.image_h
        return (
            max(0, min(math.ceil(self.tile_w), self.image_w - src_x)),
            max(0, min(math.ceil(self.tile_h), self.image_h - src_y)),
        )

    def image(self, number: int) -> StoredImage:
        index = int(self.image_index[number])
        return StoredImage(
            int(self.image_fileno[number]),
            int(self.image_offset[number]),
            int(self.image_length[number]),
            self.index,
            index % self.images_x,
            index // self.images_x,
        )

    @property
    def index_bytes(self) -> int:
        """Bytes held by this level's tile map arrays."""
        arrays = (
            self.grid,
            self.tile_dx,
            self.tile_dy,
            self.tile_image,
            self.tile_src_x,
            self.tile_src_y,
            self.image_fileno,
            self.image_offset,
            self.image_length,
            self.image_index,
        )
        return sum(a.nbytes for a in arrays)

    @property
    def tile_count(self) -> int:
        """Tiles in the map (a tile inserted again at the same place replaces the first)."""
        return int(np.count_nonzero(self.grid >= 0))


class SlidedatReader:
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


class _IndexReader(IndexDat):
    """Index.dat whose every problem means "let OpenSlide read this slide"."""

    def fail(self, reason: str) -> MiraxDirectUnsupported:
        return MiraxDirectUnsupported(f"{self.path}: {reason}")


def _nonhier_offset(ini: SlidedatReader, count: int, name: str) -> int:
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


# building the tile maps ----------------------------------------------------------------


@dataclass(frozen=True)
class _LevelSection:
    concat_exponent: int
    overlap_x: float
    overlap_y: float
    image_format: str
    image_w: int
    image_h: int


def _read_level_section(ini: SlidedatReader, level: int, group: str) -> _LevelSection:
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
    position_record: int,
    compressed: bool,
    npositions: int,
    positions_x: int,
    level0: _LevelSection,
    divisions: int,
) -> tuple[array[int], array[int]]:
    """Camera field positions (x, y) in level-0 pixels, as OpenSlide's process_indexfile;
    in flat arrays, as a list of tuples cost 90 bytes a field."""
    if position_record == -1:
        step_x = level0.image_w * divisions - level0.overlap_x
        step_y = level0.image_h * divisions - level0.overlap_y
        return (
            array("q", (int((i % positions_x) * step_x) for i in range(npositions))),
            array("q", (int((i // positions_x) * step_y) for i in range(npositions))),
        )
    offset, length, fileno = index.nonhier_record(position_record)
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
    records = np.frombuffer(raw, _POSITION_DTYPE, npositions)
    flagged = np.flatnonzero(records["flag"] & 0xFE)
    if flagged.size:
        i = int(flagged[0])
        raise MiraxDirectUnsupported(f"{path}: position {i} has flag {int(records['flag'][i])}")
    # times the level-0 concat factor, which must be 1
    return (
        array("q", records["x"].astype(np.int64).tobytes()),
        array("q", records["y"].astype(np.int64).tobytes()),
    )


def build_levels(
    ini: SlidedatReader, folder: Path
) -> tuple[list[Level], tuple[int, int, int, int], list[Path]]:
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
        data = index_path.read_bytes()
    except OSError as exc:
        raise MiraxDirectUnsupported(f"{index_path}: cannot read the index ({exc})") from exc
    index = _IndexReader(index_path, data, slide_id)

    positions_x = images_x // divisions
    npositions = positions_x * (images_y // divisions)
    positions = _slide_positions(
        index,
        datafiles,
        vimslide if vimslide != -1 else stitching,
        vimslide == -1 and stitching != -1,
        npositions,
        positions_x,
        level0,
        divisions,
    )

    levels: list[Level] = []
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
            Level(
                i,
                float(concat),
                hs.image_format,
                hs.image_w,
                hs.image_h,
                tile_w,
                tile_h,
                adv_x,
                adv_y,
                images_x,
            )
        )
        params.append((concat, tile_count_divisor, tiles_per_image, positions_per_tile))

    active = bytearray(npositions)  # 1: a level-0 image of this camera field is in the map
    positions_fx, positions_fy = positions
    image0_w, image0_h = level0.image_w, level0.image_h
    firsts: list[np.ndarray] = []
    for i, lv in enumerate(levels):
        concat, tile_count_divisor, tiles_per_image, positions_per_tile = params[i]
        maker = _LevelMaker(
            lv,
            (images_y - 1) // tile_count_divisor + tiles_per_image,
            (images_x - 1) // tile_count_divisor + tiles_per_image,
        )
        # The records of zoom level i, page by page (core.mirax.format).
        for image_index, offset, length, fileno in index.hier_records(i):
            x, y = image_index % images_x, image_index // images_x
            if y >= images_y or x % concat or y % concat:
                raise index.fail(f"zoom level {i}: image index {image_index} is out of place")
            if fileno >= datafile_count:
                raise index.fail(f"zoom level {i}: record names data file {fileno}")
            image = maker.add_image(fileno, offset, length, image_index)
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
                    field_x, field_y = positions_fx[cp], positions_fy[cp]
                    pos0_x = field_x + image0_w * (xx - xp * divisions)
                    pos0_y = field_y + image0_h * (yy - yp * divisions)
                    if i == 0:
                        if field_x == 0 and field_y == 0 and (xp != 0 or yp != 0):
                            continue
                        active[cp] = 1
                    elif not any(
                        (k := ypp * positions_x + xpp) < npositions and active[k]
                        for ypp in range(yp, yp + positions_per_tile)
                        for xpp in range(xp, xp + positions_per_tile)
                    ):
                        continue
                    maker.insert_tile(
                        image,
                        pos0_x / concat,
                        pos0_y / concat,
                        lv.tile_w * xi,
                        lv.tile_h * yi,
                        x // tile_count_divisor + xi,
                        y // tile_count_divisor + yi,
                    )
        firsts.append(maker.finish())

    bounds = _grid_bounds(levels[0])
    for lv, first in zip(levels, firsts, strict=True):
        lv.unsupported = _level_problem(lv, bounds, first)
    if levels[0].unsupported is not None:
        raise MiraxDirectUnsupported(f"{ini.path}: level 0: {levels[0].unsupported}")
    return levels, bounds, datafiles


class _LevelMaker:
    """Fills a level's arrays: insert_tile of the MIRAX reader plus the tilemap grid's
    add_tile, appending to flat arrays (a few bytes a tile, no object per tile)."""

    def __init__(self, lv: Level, rows: int, cols: int) -> None:
        self.lv = lv
        self.grid = np.full((rows, cols), -1, np.int32)
        self.first = np.full((rows, cols), -1, np.int32)  # for the dict order, see below
        self.dx: array[float] = array("d")
        self.dy: array[float] = array("d")
        self.image: array[int] = array("i")
        self.src_x: array[int] = array("i")
        self.src_y: array[int] = array("i")
        self.fileno: array[int] = array("i")
        self.offset: array[int] = array("i")
        self.length: array[int] = array("i")
        self.index: array[int] = array("i")

    def add_image(self, fileno: int, offset: int, length: int, image_index: int) -> int:
        self.fileno.append(fileno)
        self.offset.append(offset)
        self.length.append(length)
        self.index.append(image_index)
        return len(self.index) - 1

    def insert_tile(
        self,
        image: int,
        pos_x: float,
        pos_y: float,
        src_x: float,
        src_y: float,
        col: int,
        row: int,
    ) -> None:
        lv = self.lv
        if not (0 <= row < self.grid.shape[0] and 0 <= col < self.grid.shape[1]):
            raise MiraxDirectUnsupported(f"level {lv.index}: tile ({col}, {row}) outside the map")
        tile = len(self.image)
        self.dx.append(pos_x - col * lv.advance_x)
        self.dy.append(pos_y - row * lv.advance_y)
        self.image.append(image)
        self.src_x.append(int(src_x) if lv.subtile else 0)
        self.src_y.append(int(src_y) if lv.subtile else 0)
        self.grid[row, col] = tile  # a tile inserted again at the same place replaces it
        if self.first[row, col] < 0:
            self.first[row, col] = tile

    def finish(self) -> np.ndarray:
        """Store the arrays in the level; returns, per grid cell, the first tile inserted
        there (a dict keyed by (col, row) keeps a key where it was first inserted: the
        order _level_problem reports the first misplaced tile in)."""
        lv = self.lv
        lv.grid = self.grid
        # Views of the arrays filled, not copies: a copy would free the filled ones and
        # leave holes in the heap that the process keeps.
        lv.tile_dx = np.frombuffer(self.dx, np.float64)
        lv.tile_dy = np.frombuffer(self.dy, np.float64)
        lv.tile_image = _int32(self.image)
        lv.tile_src_x = _int32(self.src_x)
        lv.tile_src_y = _int32(self.src_y)
        lv.image_fileno = _int32(self.fileno)
        lv.image_offset = _int32(self.offset)
        lv.image_length = _int32(self.length)
        lv.image_index = _int32(self.index)
        # The tilemap grid's extra tiles, over every tile inserted (replaced ones too).
        dx, dy = lv.tile_dx, lv.tile_dy
        lv.extra_right = _max_ceil(-dx[dx < 0] / lv.advance_x)
        lv.extra_left = _max_ceil(_positive(dx + (lv.tile_w - lv.advance_x)) / lv.advance_x)
        lv.extra_bottom = _max_ceil(-dy[dy < 0] / lv.advance_y)
        lv.extra_top = _max_ceil(_positive(dy + (lv.tile_h - lv.advance_y)) / lv.advance_y)
        return self.first


def _int32(values: array[int]) -> np.ndarray:
    return np.frombuffer(values, np.int32)


def _positive(values: np.ndarray) -> np.ndarray:
    return values[values > 0]


def _max_ceil(values: np.ndarray) -> int:
    return max(0, int(np.ceil(values).max())) if values.size else 0


def _live_tiles(lv: Level) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, tile numbers) of the tiles in the map, in (row, col) order."""
    rows, cols = np.nonzero(lv.grid >= 0)
    return rows, cols, lv.grid[rows, cols]


def _grid_bounds(lv: Level) -> tuple[int, int, int, int]:
    """`openslide.bounds-*` from the level-0 tilemap (_openslide_set_bounds_props_from_grid)."""
    rows, cols, tiles = _live_tiles(lv)
    if not tiles.size:
        return 0, 0, 0, 0
    # The same float64 operations, in the same order, as on Python floats.
    xs = cols * lv.advance_x + lv.tile_dx[tiles]
    ys = rows * lv.advance_y + lv.tile_dy[tiles]
    left, top = float(xs.min()), float(ys.min())
    right = float((xs + lv.tile_w).max())
    bottom = float((ys + lv.tile_h).max())
    width, height = right - left, bottom - top
    return (
        math.floor(left),
        math.floor(top),
        math.ceil(left + width) - math.floor(left),
        math.ceil(top + height) - math.floor(top),
    )


def _level_problem(lv: Level, bounds: tuple[int, int, int, int], first: np.ndarray) -> str | None:
    """Why this level is not a plain paste for bounds-aligned reads, or None. `first`:
    per grid cell, the first tile inserted there (the order tiles are reported in)."""
    if lv.image_format not in ("JPEG", "PNG"):
        return f"{lv.image_format} images are not decoded here"
    if not ((lv.advance_x * _DYADIC).is_integer() and (lv.advance_y * _DYADIC).is_integer()):
        return (
            f"tile advance {lv.advance_x}x{lv.advance_y} is not a multiple of 1/{_DYADIC}, "
            "so OpenSlide's placement arithmetic is not exact"
        )
    if lv.subtile and not (lv.tile_w.is_integer() and lv.tile_h.is_integer()):
        return f"images split into fractional {lv.tile_w}x{lv.tile_h} sub-tiles"
    origin_x = bounds[0] / lv.downsample
    origin_y = bounds[1] / lv.downsample
    rows, cols, tiles = _live_tiles(lv)
    xs = cols * lv.advance_x + lv.tile_dx[tiles]
    ys = rows * lv.advance_y + lv.tile_dy[tiles]
    fx, fy = xs - origin_x, ys - origin_y
    whole = np.isfinite(fx) & (np.floor(fx) == fx) & np.isfinite(fy) & (np.floor(fy) == fy)
    off = np.flatnonzero(~whole)
    if not off.size:
        return None
    at = int(off[np.argmin(first[rows[off], cols[off]])])
    image = lv.image(int(lv.tile_image[tiles[at]]))
    return (
        f"image ({image.x}, {image.y}) sits at ({float(xs[at])}, {float(ys[at])}), not a whole "
        f"number of level pixels from the bounds origin, so OpenSlide resamples it"
    )
