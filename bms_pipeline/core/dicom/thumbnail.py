"""The THUMBNAIL instance: made from the slide's own pyramid, and checked against it.

wsidicomizer copies the MIRAX preview image as the THUMBNAIL and crops it as if it covered
the whole level-0 canvas. Real previews need not (ours cover the bounds, the whole canvas
or are absent), so the THUMBNAIL showed another region than the slide, or was missing.
Viewers show the THUMBNAIL as the overview map, so it must be the slide: it is rendered
from the lowest pyramid level that still has at least `THUMBNAIL_MAX_SIDE` pixels along the
long side of the converted bounds, then resized. The publication gate compares it with
the smallest VOLUME level written that is at least as large (`compared_level`) and, below
`MIN_THUMBNAIL_CORRELATION`, leaves the THUMBNAIL out of the series with a warning (an
optional object never withholds a slide; `core.dicom.publication`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from openslide import AbstractSlide
from PIL import Image
from pydicom.pixels.utils import pixel_array
from pydicom.uid import JPEGBaseline8Bit

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicom.levels import WsmLevel, levels_of, volume_levels

THUMBNAIL_MAX_SIDE = 1024
"""Long side of the THUMBNAIL in pixels (smaller slides keep their size)."""

MIN_THUMBNAIL_CORRELATION = 0.9
"""Pearson correlation of the luminance of the THUMBNAIL and of the compared VOLUME level
reduced to the same size. Measured (`benchmarks/bench_thumbnail.py`, the
README's table) over the 12 foreign MIRAX slides and the generator's variants: right
THUMBNAILs 0.995 or more; wrong pictures (another region, shifted by 1/128 of the side or
more, flipped, the macro, a preview of another area, wsidicomizer's preview crop) 0.835 at
most."""

_COMPARE_SIDE = 256


def thumbnail_size(width: int, height: int, max_side: int = THUMBNAIL_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the THUMBNAIL for converted bounds of `width` x `height`."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


_OPENSLIDE_PIECE = 4096
"""`openslide_read_region` paints a read in pieces of at most 4096 x 4096 level pixels."""


def render_thumbnail(
    slide: AbstractSlide,
    bounds: tuple[int, int, int, int],
    background: tuple[int, int, int],
    max_side: int = THUMBNAIL_MAX_SIDE,
) -> np.ndarray:
    """The converted region (`bounds` in level-0 pixels) as RGB, composited over the
    background the way the pyramid is, resized so its long side is `max_side`.

    Read whole, the region of a full-height BMDeep slide (5,985 x 14,057 px at level 5)
    took about 750 MB at once (OpenSlide's RGBA, the RGB canvas and the mask, 4 bytes a
    pixel each), the converter's peak memory, growing with the slide's height; kept whole as
    three 1-byte planes it was still 252 MB. So it is read one band of the 4096 x 4096
    pieces `openslide_read_region` paints anyway at a time (the same calls, so the same
    pixels), each piece composited the same way, and each band's three planes narrowed to
    the THUMBNAIL's width at once; only the narrowed planes (1/14 of the region at full
    height) are kept for the resize in height. The two passes are Pillow's own
    (`resize_in_two_passes`), so the bytes are those of the whole canvas resized that way
    (`test_thumbnail_bands`).
    """
    x, y, width, height = bounds
    size = thumbnail_size(width, height, max_side)
    downsample = width / size[0]
    level = slide.get_best_level_for_downsample(max(1.0, downsample))
    level_downsample = float(slide.level_downsamples[level])
    region = (
        max(1, math.ceil(width / level_downsample)),
        max(1, math.ceil(height / level_downsample)),
    )
    piece = _OPENSLIDE_PIECE
    narrowed = np.empty((3, region[1], size[0]), np.uint8)
    band = np.empty((3, min(piece, region[1]), region[0]), np.uint8)
    for row in range(math.ceil(region[1] / piece)):
        band_h = min(region[1] - row * piece, piece)
        for col in range(math.ceil(region[0] / piece)):
            # openslide_read_region's own arithmetic for the origin of a piece
            piece_x = int(x + col * piece * level_downsample)
            piece_y = int(y + row * piece * level_downsample)
            piece_w = min(region[0] - col * piece, piece)
            rgba = slide.read_region((piece_x, piece_y), level, (piece_w, band_h))
            canvas = Image.new("RGB", rgba.size, background)
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            del rgba
            for channel in range(3):
                band[channel, :band_h, col * piece : col * piece + piece_w] = np.asarray(
                    canvas.getchannel(channel)
                )
            del canvas
        rows = np.s_[row * piece : row * piece + band_h]
        for channel in range(3):
            plane = Image.fromarray(band[channel, :band_h])
            narrowed[channel, rows] = np.asarray(_narrow(plane, size[0]))
    del band
    out = np.empty((size[1], size[0], 3), np.uint8)
    for channel in range(3):
        plane = Image.fromarray(narrowed[channel])
        out[..., channel] = np.asarray(_shorten(plane, size[1]))
    return out


def _narrow(image: Image.Image, width: int) -> Image.Image:
    """Pillow's LANCZOS resize in width only: each row alone, into 8-bit rows."""
    return image.resize((width, image.height), Image.Resampling.LANCZOS)


def _shorten(image: Image.Image, height: int) -> Image.Image:
    """Pillow's LANCZOS resize in height only: each column alone."""
    return image.resize((image.width, height), Image.Resampling.LANCZOS)


def resize_in_two_passes(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The THUMBNAIL's resize: LANCZOS in width, then in height, as two calls.

    One `Image.resize` call runs the two passes in an order Pillow chooses (measured with
    Pillow 13: in height first for some tall images), rounding to 8 bits in between, so
    its bytes cannot be made band by band. The fixed order can: the width pass treats each
    row alone. It differs from the one call by at most one grey level.
    """
    return _shorten(_narrow(image, size[0]), size[1])


def _luminance(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).convert("L")
    return np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two RGB images, compared at one small size."""
    scale = min(1.0, _COMPARE_SIDE / max(a.shape[1], a.shape[0]))
    size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))
    return _pearson(_luminance(a, size).ravel(), _luminance(b, size).ravel())


def _pearson(la: np.ndarray, lb: np.ndarray) -> float:
    la, lb = la - la.mean(), lb - lb.mean()
    denominator = math.sqrt(float((la * la).sum()) * float((lb * lb).sum()))
    if denominator == 0:
        # Flat images: the same picture only if they are equally flat.
        return 1.0 if np.allclose(la, lb) else 0.0
    return float((la * lb).sum() / denominator)


@dataclass(frozen=True)
class _TileGrid:
    """How a single- or multi-frame TILED_FULL WSM instance lays its frames out."""

    rows: int  # of a frame
    columns: int
    width: int  # of the total pixel matrix
    height: int

    @classmethod
    def of(cls, ds: pydicom.Dataset) -> _TileGrid:
        rows, columns = int(ds.Rows), int(ds.Columns)
        return cls(
            rows,
            columns,
            int(ds.get("TotalPixelMatrixColumns", columns)),
            int(ds.get("TotalPixelMatrixRows", rows)),
        )

    @property
    def across(self) -> int:
        return math.ceil(self.width / self.columns)

    def check(self, path: Path, frames: int) -> None:
        down = math.ceil(self.height / self.rows)
        if self.across * down != frames:
            raise ValueError(f"{path}: {frames} frames for a {self.across}x{down} tile grid")


def total_pixel_matrix(source: Path | WsmLevel, raw: bool = False) -> np.ndarray:
    """The whole pixel matrix of a single- or multi-frame TILED_FULL WSM instance, or of a
    level concatenated over several (`core.dicom.levels`), decoded by pydicom (not by
    wsidicom, which wrote it). `raw`: in the stored colour space (YBR for JPEG), without
    pydicom's conversion to RGB."""
    level = source if isinstance(source, WsmLevel) else levels_of([Path(source)])[0]
    pieces: list[np.ndarray] = []
    for part in level.parts:
        ds = read_dataset(part.path)
        frames = pixel_array(ds, raw=True) if raw else ds.pixel_array
        pieces.append(frames[None] if part.frames == 1 else frames)
    frames = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    grid = _TileGrid(level.tile_height, level.tile_width, level.width, level.height)
    grid.check(level.path, len(frames))
    rows, columns = grid.rows, grid.columns
    image = np.zeros(
        (math.ceil(len(frames) / grid.across) * rows, grid.across * columns, 3), dtype=np.uint8
    )
    for index, frame in enumerate(frames):
        ty, tx = divmod(index, grid.across)
        image[ty * rows : (ty + 1) * rows, tx * columns : (tx + 1) * columns] = frame[..., :3]
    return image[: grid.height, : grid.width]


def thumbnail_similarity(files: Sequence[Path]) -> tuple[float | None, str]:
    """Correlation of the series' THUMBNAIL with the pyramid where it has the detail: the
    smallest VOLUME level at least as large as the THUMBNAIL, reduced to the comparison size
    (`compared_level`); and what was compared. None when the series has no THUMBNAIL."""
    all_levels = levels_of(files)
    thumbnail = next((lv for lv in all_levels if lv.flavor == "THUMBNAIL"), None)
    levels = volume_levels(all_levels)
    if thumbnail is None:
        return None, "no THUMBNAIL instance"
    index = compared_level(
        (thumbnail.width, thumbnail.height), [(lv.width, lv.height) for lv in levels]
    )
    if index is None:
        return 0.0, "no VOLUME instance to compare the THUMBNAIL with"
    level = levels[index]
    score = _correlation_of_levels(thumbnail, level)
    parts = f" in {len(level.parts)} instances" if level.concatenated else ""
    return score, (
        f"{thumbnail.path.name} ({thumbnail.width}x{thumbnail.height}) against "
        f"{level.path.name}{parts} ({level.width}x{level.height})"
    )


def compared_level(thumbnail: tuple[int, int], levels: Sequence[tuple[int, int]]) -> int | None:
    """Index of the level the THUMBNAIL is compared with: the smallest at least as wide and
    as high as the THUMBNAIL, reduced to it, so the comparison sees the pyramid's detail.
    The smallest kept level can be a few dozen pixels wide (nine levels, every second kept):
    enlarged to the THUMBNAIL's size it is mostly JPEG noise, and a right THUMBNAIL scored
    0.20. Only when no kept level is that large, the largest one."""
    if not levels:
        return None
    order = sorted(range(len(levels)), key=lambda i: levels[i][0] * levels[i][1])
    for index in order:
        width, height = levels[index]
        if width >= thumbnail[0] and height >= thumbnail[1]:
            return index
    return order[-1]


def _correlation_of_levels(a: WsmLevel, b: WsmLevel) -> float:
    """`correlation` of two levels, on the luma they store where they store YBR: the
    Y channel is the luminance (the same BT.601 weights as Pillow's "L"), and pydicom's
    YBR to RGB conversion of a whole level was most of the publication gate's time."""
    scale = min(1.0, _COMPARE_SIDE / max(a.width, a.height))
    size = (max(1, round(a.width * scale)), max(1, round(a.height * scale)))
    la, lb = (_compared_luminance(level, size).ravel() for level in (a, b))
    return _pearson(la, lb)


def _compared_luminance(level: WsmLevel, size: tuple[int, int]) -> np.ndarray:
    """The level's luminance resized to `size` (BOX)."""
    header = read_dataset(level.path, stop_before_pixels=True)
    photometric = str(header.PhotometricInterpretation)
    luma = photometric.startswith("YBR_FULL")
    if luma and header.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
        plane, reduction = _jpeg_luma_plane(level, size)
        # The region the whole matrix covers at this scale, to the fraction of a pixel, so
        # that the boxes average the same pixels as at full size.
        region = (0.0, 0.0, level.width / reduction, level.height / reduction)
        image = Image.fromarray(plane)
        return np.asarray(image.resize(size, Image.Resampling.BOX, box=region), dtype=np.float64)
    matrix = total_pixel_matrix(level, raw=luma)
    if not luma:
        return _luminance(matrix, size)
    image = Image.fromarray(np.ascontiguousarray(matrix[..., 0]))
    return np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.float64)


def _jpeg_luma_plane(level: WsmLevel, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The Y plane of a baseline-JPEG YBR level and its reduction: its frames decoded by
    Pillow's libjpeg at the smallest DCT scale (1/1 to 1/8) that keeps at least 8x the
    resolution of `size`. The comparison does not need the whole level, and decoding it at
    full size through pydicom was 10x slower (measured on a 10-megapixel level); a 2x
    margin moved the wide slide's score by 0.012, 8x by 0.001."""
    grid = _TileGrid(level.tile_height, level.tile_width, level.width, level.height)
    count = level.frames
    grid.check(level.path, count)
    reduction = 1
    while (
        reduction < 8
        and grid.width / (2 * reduction) >= 8 * size[0]
        and grid.height / (2 * reduction) >= 8 * size[1]
    ):
        reduction *= 2
    tile_w, tile_h = math.ceil(grid.columns / reduction), math.ceil(grid.rows / reduction)
    draft = (max(1, grid.columns // reduction), max(1, grid.rows // reduction))
    plane = np.zeros((math.ceil(count / grid.across) * tile_h, grid.across * tile_w), np.uint8)
    for index, frame in enumerate(level.encapsulated_frames()):
        with Image.open(io.BytesIO(frame)) as image:
            # Without a colour transform: the stored Y channel, as pixel_array(raw=True).
            image.draft("YCbCr", draft)
            if image.size != (tile_w, tile_h):
                raise ValueError(f"{level.path}: frame {index + 1} decodes to {image.size}")
            ty, tx = divmod(index, grid.across)
            plane[ty * tile_h : (ty + 1) * tile_h, tx * tile_w : (tx + 1) * tile_w] = np.asarray(
                image.getchannel(0)
            )
    return plane[
        : math.ceil(grid.height / reduction), : math.ceil(grid.width / reduction)
    ], reduction
