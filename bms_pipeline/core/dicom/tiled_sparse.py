"""Concatenated levels with explicit tile positions (TILED_SPARSE), for the viewers.

A TILED_FULL level may be split into a Concatenation: "the frames across all Instances of a
Concatenation ... comprise a non-sparse non-overlapping representation of an entire
rectangular region" (PS3.3 C.7.6.17.3), and wsidicom, OpenSlide and our own readers read it
so. The viewers an Orthanc deployment uses do not: dicom-microscopy-viewer 0.48 (Slim) maps
every part's frames from the first tile of the level and asks a part for frames it does not
hold (WADO-RS answers 400), and Orthanc's WSI plugin 1.1 leaves such a level out of the
pyramid. Both read a Concatenation whose parts state each frame's position (TILED_SPARSE with
a Plane Position (Slide) per frame), which is also what OrthancWSIDicomizer writes.

So each part of a concatenated level gets DimensionOrganizationType TILED_SPARSE and what
the VL WSI IOD then requires (dciodvfy holds it to that): per frame, its Plane Position
(Slide), by highdicom's transform from the level's origin, orientation and spacing, and its
Frame Content (DimensionIndexValues: tile row and column); a DimensionIndexSequence naming
those two dimensions; and the Optical Path Identification, shared by all frames. The frames
stay in the level's raster order, so what `core.dicom.levels` reads does not change. The
header grows, so the part is written again: the new header, then its Pixel Data copied as
stored (no decoding).
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicom.levels import LevelPart, WsmLevel, levels_of

_COPY_CHUNK = 16 * 2**20


def make_concatenations_sparse(files: Iterable[Path]) -> int:
    """Give every part of every concatenated level explicit frame positions; the number of
    parts written again. Levels of one instance are left as they are (TILED_FULL)."""
    rewritten = 0
    for level in levels_of(files):
        if not level.concatenated or not level.tiled_full:
            continue
        for part in level.parts:
            _rewrite_part(level, part)
            rewritten += 1
    return rewritten


@dataclass(frozen=True)
class FramePositions:
    """Where frames start: 1-based column and row in the total pixel matrix, and the slide
    coordinates (mm) of that pixel, as highdicom's `compute_plane_position_tiled_full`
    places a TILED_FULL frame (its vectorised transform)."""

    columns: np.ndarray
    rows: np.ndarray
    xyz: np.ndarray  # (n, 3)
    tile_rows: np.ndarray  # 1-based: the DimensionIndexValues
    tile_columns: np.ndarray


def frame_positions(header: Dataset, level: WsmLevel, first: int, count: int) -> FramePositions:
    """Positions of frames `first` .. `first + count - 1` of the level, in its raster order."""
    from highdicom.spatial import PixelToReferenceTransformer

    origin = header.TotalPixelMatrixOriginSequence[0]
    measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    tile_rows, tile_columns = level.raster_tiles(first, count)
    column_offsets = tile_columns * level.tile_width
    row_offsets = tile_rows * level.tile_height
    transform = PixelToReferenceTransformer(
        image_position=(
            float(origin.XOffsetInSlideCoordinateSystem),
            float(origin.YOffsetInSlideCoordinateSystem),
            0.0,
        ),
        image_orientation=[float(v) for v in header.ImageOrientationSlide],
        pixel_spacing=[float(v) for v in measures.PixelSpacing],
    )
    xyz = transform(np.stack([column_offsets, row_offsets], axis=1))
    return FramePositions(
        column_offsets + 1,
        row_offsets + 1,
        np.asarray(xyz, dtype=np.float64),
        tile_rows + 1,
        tile_columns + 1,
    )


# Explicit VR Little Endian encoding of the per-frame functional groups, written as bytes:
# building 82,093 items as pydicom data sets took about a minute for a full-height level 0.


def _tag(group: int, element: int) -> bytes:
    return struct.pack("<HH", group, element)


def _short(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return _tag(group, element) + vr + struct.pack("<H", len(value)) + value


def _sequence(group: int, element: int, items: list[bytes]) -> bytes:
    body = b"".join(_tag(0xFFFE, 0xE000) + struct.pack("<I", len(i)) + i for i in items)
    return _tag(group, element) + b"SQ\x00\x00" + struct.pack("<I", len(body)) + body


def _ds(value: float) -> bytes:
    text = format_number_as_ds(float(value)).encode("ascii")
    return text + b" " * (len(text) % 2)


def encode_per_frame_groups(positions: FramePositions) -> bytes:
    """PerFrameFunctionalGroupsSequence (5200,9230): per frame a Frame Content item
    (DimensionIndexValues: tile row, tile column) and a Plane Position (Slide) item."""
    items: list[bytes] = []
    for column, row, (x, y, z), tile_row, tile_column in zip(
        positions.columns.tolist(),
        positions.rows.tolist(),
        positions.xyz.tolist(),
        positions.tile_rows.tolist(),
        positions.tile_columns.tolist(),
        strict=True,
    ):
        content = _short(0x0020, 0x9157, b"UL", struct.pack("<II", tile_row, tile_column))
        plane = (
            _short(0x0040, 0x072A, b"DS", _ds(x))
            + _short(0x0040, 0x073A, b"DS", _ds(y))
            + _short(0x0040, 0x074A, b"DS", _ds(z))
            + _short(0x0048, 0x021E, b"SL", struct.pack("<i", column))
            + _short(0x0048, 0x021F, b"SL", struct.pack("<i", row))
        )
        items.append(_sequence(0x0020, 0x9111, [content]) + _sequence(0x0048, 0x021A, [plane]))
    return _sequence(0x5200, 0x9230, items)


ROW_POSITION = Tag("RowPositionInTotalImagePixelMatrix")
COLUMN_POSITION = Tag("ColumnPositionInTotalImagePixelMatrix")
PLANE_POSITION = Tag("PlanePositionSlideSequence")


PER_FRAME = Tag("PerFrameFunctionalGroupsSequence")


def _make_sparse(header: Dataset) -> None:
    """The attributes of a TILED_SPARSE part other than the per-frame groups, in place."""
    header.DimensionOrganizationType = "TILED_SPARSE"
    organization = header.DimensionOrganizationSequence[0].DimensionOrganizationUID
    dimensions: list[Dataset] = []
    for pointer, label in ((ROW_POSITION, "Row Position"), (COLUMN_POSITION, "Column Position")):
        dimension = Dataset()
        dimension.DimensionOrganizationUID = organization
        dimension.DimensionIndexPointer = pointer
        dimension.FunctionalGroupPointer = PLANE_POSITION
        dimension.DimensionDescriptionLabel = label
        dimensions.append(dimension)
    header.DimensionIndexSequence = DicomSequence(dimensions)
    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = header.OpticalPathSequence[0].OpticalPathIdentifier
    header.SharedFunctionalGroupsSequence[0].OpticalPathIdentificationSequence = DicomSequence(
        [optical_path]
    )


def _rewrite_part(level: WsmLevel, part: LevelPart) -> None:
    """The part with its frames' positions, into a temporary file that replaces it: the
    header's elements before (5200,9230) through pydicom, the per-frame groups as encoded
    bytes, the elements after them (the Extended Offset Table), then its Pixel Data as
    stored (no decoding)."""
    with open(part.path, "rb") as source:
        header = read_dataset(source, stop_before_pixels=True)
        pixel_data_at = source.tell()  # pydicom leaves the file at the Pixel Data tag
        if PER_FRAME in header:
            raise ValueError(f"{part.path}: already has per-frame functional groups")
        _make_sparse(header)
        per_frame = encode_per_frame_groups(
            frame_positions(header, level, part.frame_offset, part.frames)
        )
        after = Dataset()
        for tag in [t for t in list(header.keys()) if t > PER_FRAME]:
            after[tag] = header[tag]
            del header[tag]
        tail = DicomBytesIO()
        tail.is_little_endian, tail.is_implicit_VR = True, False
        write_dataset(tail, after)
        temporary = part.path.with_name(part.path.name + ".sparse")
        try:
            with open(temporary, "wb") as target:
                header.save_as(target, enforce_file_format=True)
                target.write(per_frame)
                target.write(tail.getvalue())
                source.seek(pixel_data_at)
                shutil.copyfileobj(source, target, _COPY_CHUNK)
            os.replace(temporary, part.path)
        finally:
            temporary.unlink(missing_ok=True)
