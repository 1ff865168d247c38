"""The per-frame functional groups of concatenated parts, encoded as bytes, read back by
pydicom as highdicom computes each frame's position."""

from __future__ import annotations

import pydicom
import pytest
from highdicom.utils import compute_plane_position_tiled_full

from bms_pipeline.core.dicom.levels import levels_of
from bms_pipeline_tests.conftest import ConcatenatedPair


def test_each_frame_is_where_highdicom_places_a_tiled_full_frame(
    concatenated_pair: ConcatenatedPair,
) -> None:
    checked = 0
    for level in levels_of(concatenated_pair.concatenated.files):
        if not level.concatenated:
            continue
        for part in level.parts:
            ds = pydicom.dcmread(part.path, stop_before_pixels=True)
            origin = ds.TotalPixelMatrixOriginSequence[0]
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                ty, tx = divmod(part.frame_offset + index, level.across)
                (expected,) = compute_plane_position_tiled_full(
                    row_index=ty + 1,
                    column_index=tx + 1,
                    x_offset=float(origin.XOffsetInSlideCoordinateSystem),
                    y_offset=float(origin.YOffsetInSlideCoordinateSystem),
                    rows=level.tile_height,
                    columns=level.tile_width,
                    image_orientation=[float(v) for v in ds.ImageOrientationSlide],
                    pixel_spacing=[float(v) for v in spacing],
                )
                (stated,) = item.PlanePositionSlideSequence
                for keyword in (
                    "XOffsetInSlideCoordinateSystem",
                    "YOffsetInSlideCoordinateSystem",
                    "ZOffsetInSlideCoordinateSystem",
                ):
                    assert float(stated[keyword].value) == pytest.approx(
                        float(expected[keyword].value), abs=1e-9
                    ), (part.path.name, index, keyword)
                for keyword in (
                    "ColumnPositionInTotalImagePixelMatrix",
                    "RowPositionInTotalImagePixelMatrix",
                ):
                    assert stated[keyword].value == expected[keyword].value
                assert list(item.FrameContentSequence[0].DimensionIndexValues) == [ty + 1, tx + 1]
                checked += 1
    assert checked > 10


def test_the_extended_offset_table_and_the_frames_survive_the_rewrite(
    concatenated_pair: ConcatenatedPair,
) -> None:
    """Each part's frames, found through its own (Extended) offset table after the header
    grew, are the single-instance level's frames in order."""
    from pydicom.encaps import get_frame

    single = {(lv.flavor, lv.width): lv for lv in levels_of(concatenated_pair.single.files)}
    for level in levels_of(concatenated_pair.concatenated.files):
        if not level.concatenated:
            continue
        whole = list(single[(level.flavor, level.width)].encapsulated_frames())
        for part in level.parts:
            ds = pydicom.dcmread(part.path)
            for index in range(part.frames):
                frame = get_frame(
                    ds.PixelData,
                    index,
                    number_of_frames=part.frames,
                    extended_offsets=(
                        (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
                        if "ExtendedOffsetTable" in ds
                        else None
                    ),
                )
                assert frame == whole[part.frame_offset + index]
