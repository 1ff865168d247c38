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
(Slide), computed by highdicom from the level's origin, orientation and spacing, and its
Frame Content (DimensionIndexValues: tile row and column); a DimensionIndexSequence naming
those two dimensions; and the Optical Path Identification, shared by all frames. The frames stay in the level's
raster order, so what `core.dicom.levels` reads does not change. The header grows, so the
part is written again: the new header, then its Pixel Data copied as stored (no decoding).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

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


def frame_positions(header: Dataset, level: WsmLevel, first: int, count: int) -> list[Dataset]:
    """Per-frame functional group items (Plane Position (Slide)) of frames `first` ..
    `first + count - 1` of the level, in its TILED_FULL raster order."""
    from highdicom.utils import compute_plane_position_tiled_full

    origin = header.TotalPixelMatrixOriginSequence[0]
    spacing = [
        float(v)
        for v in header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ]
    orientation = [float(v) for v in header.ImageOrientationSlide]
    items: list[Dataset] = []
    for index in range(first, first + count):
        ty, tx = divmod(index, level.across)
        item = Dataset()
        item.PlanePositionSlideSequence = compute_plane_position_tiled_full(
            row_index=ty + 1,
            column_index=tx + 1,
            x_offset=float(origin.XOffsetInSlideCoordinateSystem),
            y_offset=float(origin.YOffsetInSlideCoordinateSystem),
            rows=level.tile_height,
            columns=level.tile_width,
            image_orientation=orientation,
            pixel_spacing=spacing,
        )
        items.append(item)
    return items


ROW_POSITION = Tag("RowPositionInTotalImagePixelMatrix")
COLUMN_POSITION = Tag("ColumnPositionInTotalImagePixelMatrix")
PLANE_POSITION = Tag("PlanePositionSlideSequence")


def _make_sparse(header: Dataset, level: WsmLevel, part: LevelPart) -> None:
    """The attributes of a TILED_SPARSE part, in place."""
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
    items = frame_positions(header, level, part.frame_offset, part.frames)
    for index, item in enumerate(items):
        ty, tx = divmod(part.frame_offset + index, level.across)
        content = Dataset()
        content.DimensionIndexValues = [ty + 1, tx + 1]
        item.FrameContentSequence = DicomSequence([content])
    header.PerFrameFunctionalGroupsSequence = DicomSequence(items)


def _rewrite_part(level: WsmLevel, part: LevelPart) -> None:
    """The part with its frames' positions: a new header, then its Pixel Data as stored,
    into a temporary file that replaces the part."""
    with open(part.path, "rb") as source:
        header = read_dataset(source, stop_before_pixels=True)
        pixel_data_at = source.tell()  # pydicom leaves the file at the Pixel Data tag
        _make_sparse(header, level, part)
        temporary = part.path.with_name(part.path.name + ".sparse")
        try:
            with open(temporary, "wb") as target:
                header.save_as(target, enforce_file_format=True)
                source.seek(pixel_data_at)
                shutil.copyfileobj(source, target, _COPY_CHUNK)
            os.replace(temporary, part.path)
        finally:
            temporary.unlink(missing_ok=True)
