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
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import JPEGBaseline8Bit

from bms_pipeline.core.dicom.files import read_dataset

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

    Read whole, the region of a full-height BMDeep slide (5,954 x 14,024 px at level 5)
    took about 750 MB at once (OpenSlide's RGBA, the RGB canvas and the mask, 4 bytes a
    pixel each), the converter's peak memory, growing with the slide's height. So it is
    read in the 4096 x 4096 pieces `openslide_read_region` paints anyway (the same calls,
    so the same pixels), each composited the same way, kept as three 1-byte channel
    planes, and each plane resized alone: Pillow resizes every channel with the same
    coefficients, whichever pass it runs first, so the bytes are those of the whole
    canvas resized (`test_thumbnail_bands`).
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
    planes = np.empty((3, region[1], region[0]), np.uint8)
    piece = _OPENSLIDE_PIECE
    for row in range(math.ceil(region[1] / piece)):
        for col in range(math.ceil(region[0] / piece)):
            # openslide_read_region's own arithmetic for the origin of a piece
            piece_x = int(x + col * piece * level_downsample)
            piece_y = int(y + row * piece * level_downsample)
            piece_w = min(region[0] - col * piece, piece)
            piece_h = min(region[1] - row * piece, piece)
            rgba = slide.read_region((piece_x, piece_y), level, (piece_w, piece_h))
            canvas = Image.new("RGB", rgba.size, background)
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            del rgba
            at = np.s_[row * piece : row * piece + piece_h, col * piece : col * piece + piece_w]
            for channel in range(3):
                planes[channel][at] = np.asarray(canvas.getchannel(channel))
            del canvas
    if region == size:
        return np.ascontiguousarray(planes.transpose(1, 2, 0))
    out = np.empty((size[1], size[0], 3), np.uint8)
    for channel in range(3):
        plane = Image.fromarray(planes[channel])
        out[..., channel] = np.asarray(plane.resize(size, Image.Resampling.LANCZOS))
    return out


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


def total_pixel_matrix(path: Path, raw: bool = False) -> np.ndarray:
    """The whole pixel matrix of a single- or multi-frame TILED_FULL WSM instance, decoded
    by pydicom (not by wsidicom, which wrote it). `raw`: in the stored colour space (YBR
    for JPEG), without pydicom's conversion to RGB."""
    ds = read_dataset(path)
    frames = pixel_array(ds, raw=True) if raw else ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1)) == 1:
        frames = frames[None]
    grid = _TileGrid.of(ds)
    grid.check(path, len(frames))
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
    thumbnail: tuple[tuple[int, int], Path] | None = None
    levels: list[tuple[tuple[int, int], Path]] = []
    for path in files:
        ds = read_dataset(path, stop_before_pixels=True)
        flavor = str(ds.ImageType[2]) if len(ds.ImageType) > 2 else ""
        grid = _TileGrid.of(ds)
        if flavor == "THUMBNAIL":
            thumbnail = ((grid.width, grid.height), Path(path))
        elif flavor == "VOLUME":
            levels.append(((grid.width, grid.height), Path(path)))
    if thumbnail is None:
        return None, "no THUMBNAIL instance"
    level = compared_level(thumbnail[0], [size for size, _ in levels])
    if level is None:
        return 0.0, "no VOLUME instance to compare the THUMBNAIL with"
    size, path = levels[level]
    score = _correlation_of_files(thumbnail[1], path)
    return score, (
        f"{thumbnail[1].name} ({thumbnail[0][0]}x{thumbnail[0][1]}) against "
        f"{path.name} ({size[0]}x{size[1]})"
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


def _correlation_of_files(a: Path, b: Path) -> float:
    """`correlation` of two instances, on the luma they store where they store YBR: the
    Y channel is the luminance (the same BT.601 weights as Pillow's "L"), and pydicom's
    YBR to RGB conversion of a whole level was most of the publication gate's time."""
    headers = [read_dataset(path, stop_before_pixels=True) for path in (a, b)]
    grid = _TileGrid.of(headers[0])
    width, height = grid.width, grid.height
    scale = min(1.0, _COMPARE_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    la, lb = (
        _compared_luminance(path, header, size).ravel()
        for path, header in zip((a, b), headers, strict=True)
    )
    return _pearson(la, lb)


def _compared_luminance(path: Path, header: pydicom.Dataset, size: tuple[int, int]) -> np.ndarray:
    """The instance's luminance resized to `size` (BOX)."""
    photometric = str(header.PhotometricInterpretation)
    luma = photometric.startswith("YBR_FULL")
    if luma and header.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
        grid = _TileGrid.of(header)
        plane, reduction = _jpeg_luma_plane(path, grid, size)
        # The region the whole matrix covers at this scale, to the fraction of a pixel, so
        # that the boxes average the same pixels as at full size.
        region = (0.0, 0.0, grid.width / reduction, grid.height / reduction)
        image = Image.fromarray(plane)
        return np.asarray(image.resize(size, Image.Resampling.BOX, box=region), dtype=np.float64)
    matrix = total_pixel_matrix(path, raw=luma)
    if not luma:
        return _luminance(matrix, size)
    image = Image.fromarray(np.ascontiguousarray(matrix[..., 0]))
    return np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.float64)


def _jpeg_luma_plane(path: Path, grid: _TileGrid, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The Y plane of a baseline-JPEG YBR instance and its reduction: its frames decoded by
    Pillow's libjpeg at the smallest DCT scale (1/1 to 1/8) that keeps at least 8x the
    resolution of `size`. The comparison does not need the whole level, and decoding it at
    full size through pydicom was 10x slower (measured on a 10-megapixel level); a 2x
    margin moved the wide slide's score by 0.012, 8x by 0.001."""
    ds = read_dataset(path)
    count = int(getattr(ds, "NumberOfFrames", 1))
    grid.check(path, count)
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
    for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=count)):
        with Image.open(io.BytesIO(frame)) as image:
            # Without a colour transform: the stored Y channel, as pixel_array(raw=True).
            image.draft("YCbCr", draft)
            if image.size != (tile_w, tile_h):
                raise ValueError(f"{path}: frame {index + 1} decodes to {image.size}")
            ty, tx = divmod(index, grid.across)
            plane[ty * tile_h : (ty + 1) * tile_h, tx * tile_w : (tx + 1) * tile_w] = np.asarray(
                image.getchannel(0)
            )
    return plane[
        : math.ceil(grid.height / reduction), : math.ceil(grid.width / reduction)
    ], reduction
