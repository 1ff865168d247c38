# pyright: standard
"""OpenSlide 4's MIRAX tile map, rebuilt from Slidedat.ini, Index.dat and the camera positions."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

from bms_pipeline.core.mirax.direct.errors import MiraxDirectUnsupported
from bms_pipeline.core.mirax.format import POSITION_RECORD, IndexDat

_DYADIC = 256  # advances must be multiples of 1/256 so float sums stay exact
_FORMATS = frozenset({"JPEG", "PNG", "BMP24"})  # parse_image_format of OpenSlide


@dataclass(frozen=True, slots=True)
class StoredImage:
    fileno: int
    offset: int
    length: int
    level: int
    x: int  # level-0 image index, for messages
    y: int


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile-map entry: a stored image, or the sub-rectangle of one at higher levels."""

    offset_x: float  # delta from the natural position col * advance, in level pixels
    offset_y: float
    image: StoredImage
    src_x: int  # painted sub-rectangle of the decoded image
    src_y: int
    paint_w: int
    paint_h: int


@dataclass
class Level:
    index: int
    downsample: float
    image_format: str
    image_w: int
    image_h: int
    tile_w: float
    tile_h: float
    advance_x: float
    advance_y: float
    tiles: dict[tuple[int, int], Tile]
    extra_left: int = 0
    extra_right: int = 0
    extra_top: int = 0
    extra_bottom: int = 0
    unsupported: str | None = None


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
) -> list[tuple[int, int]]:
    """Camera field positions in level-0 pixels, as OpenSlide's process_indexfile."""
    if position_record == -1:
        step_x = level0.image_w * divisions - level0.overlap_x
        step_y = level0.image_h * divisions - level0.overlap_y
        return [
            (int((i % positions_x) * step_x), int((i // positions_x) * step_y))
            for i in range(npositions)
        ]
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
    positions = []
    for i in range(npositions):
        flag, px, py = POSITION_RECORD.unpack_from(raw, i * POSITION_RECORD.size)
        if flag & 0xFE:
            raise MiraxDirectUnsupported(f"{path}: position {i} has flag {flag}")
        positions.append((px, py))  # times the level-0 concat factor, which must be 1
    return positions


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
                {},
            )
        )
        params.append((concat, tile_count_divisor, tiles_per_image, positions_per_tile))

    active: set[int] = set()
    image0_w, image0_h = level0.image_w, level0.image_h
    for i, lv in enumerate(levels):
        concat, tile_count_divisor, tiles_per_image, positions_per_tile = params[i]
        # The records of zoom level i, page by page (core.mirax.format).
        for image_index, offset, length, fileno in index.hier_records(i):
            x, y = image_index % images_x, image_index // images_x
            if y >= images_y or x % concat or y % concat:
                raise index.fail(f"zoom level {i}: image index {image_index} is out of place")
            if fileno >= datafile_count:
                raise index.fail(f"zoom level {i}: record names data file {fileno}")
            image = StoredImage(fileno, offset, length, i, x, y)
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

    bounds = _grid_bounds(levels[0])
    for lv in levels:
        lv.unsupported = _level_problem(lv, bounds)
    if levels[0].unsupported is not None:
        raise MiraxDirectUnsupported(f"{ini.path}: level 0: {levels[0].unsupported}")
    return levels, bounds, datafiles


def _insert_tile(
    lv: Level,
    image: StoredImage,
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
    lv.tiles[(col, row)] = Tile(offset_x, offset_y, image, sx, sy, paint_w, paint_h)
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


def _grid_bounds(lv: Level) -> tuple[int, int, int, int]:
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


def _level_problem(lv: Level, bounds: tuple[int, int, int, int]) -> str | None:
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
