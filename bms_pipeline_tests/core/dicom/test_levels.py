"""Levels written as DICOM Concatenations (`conventions.sm.concatenate_frames`) read as the
single instance they replace: by our own reader, by OpenSlide and by wsidicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from wsidicom import WsiDicom

from bms_pipeline.core.dicom.levels import levels_of, volume_levels
from bms_pipeline.core.dicom.thumbnail import thumbnail_similarity, total_pixel_matrix
from bms_pipeline_tests.conftest import (
    CONCATENATED_FRAMES,
    ConcatenatedPair,
    convert_test_slide,
)


def _files(pair: ConcatenatedPair) -> tuple[list[Path], list[Path]]:
    return list(pair.single.files), list(pair.concatenated.files)


def test_a_level_of_more_frames_than_the_limit_is_split_into_numbered_parts(
    concatenated_pair: ConcatenatedPair,
) -> None:
    single, concatenated = (volume_levels(levels_of(f)) for f in _files(concatenated_pair))
    assert [(lv.width, lv.height) for lv in concatenated] == [
        (lv.width, lv.height) for lv in single
    ]
    base = concatenated[0]
    assert len(base.parts) == -(-single[0].frames // CONCATENATED_FRAMES) > 2
    assert [p.number for p in base.parts] == list(range(1, len(base.parts) + 1))
    assert all(p.frames <= CONCATENATED_FRAMES for p in base.parts)
    assert len({p.concatenation_uid for p in base.parts}) == 1
    assert len({p.sop_instance_uid for p in base.parts}) == len(base.parts)
    assert all(level.problems() == [] for level in concatenated)
    assert not single[0].concatenated and single[0].problems() == []


def test_a_concatenated_level_holds_the_frames_and_pixels_of_the_single_instance(
    concatenated_pair: ConcatenatedPair,
) -> None:
    single, concatenated = (volume_levels(levels_of(f)) for f in _files(concatenated_pair))
    for one, parts in zip(single, concatenated, strict=True):
        assert list(parts.encapsulated_frames()) == list(one.encapsulated_frames())
        assert np.array_equal(total_pixel_matrix(parts), total_pixel_matrix(one.path))


def test_openslide_and_wsidicom_read_the_concatenated_series_as_the_single_one(
    concatenated_pair: ConcatenatedPair,
) -> None:
    single_dir, parts_dir = concatenated_pair.single.sm_dir, concatenated_pair.concatenated.sm_dir
    with WsiDicom.open(single_dir) as one, WsiDicom.open(parts_dir) as parts:
        assert [lv.size for lv in parts.levels] == [lv.size for lv in one.levels]
        size = (one.size.width, one.size.height)
        a = np.asarray(one.read_region((0, 0), 0, size))
        b = np.asarray(parts.read_region((0, 0), 0, size))
        assert np.array_equal(a, b)
    with (
        openslide.OpenSlide(str(next(single_dir.glob("*.dcm")))) as one,
        openslide.OpenSlide(str(next(parts_dir.glob("*.dcm")))) as parts,
    ):
        assert parts.level_dimensions == one.level_dimensions
        w, h = one.dimensions
        assert np.array_equal(
            np.asarray(parts.read_region((0, 0), 0, (w, h))),
            np.asarray(one.read_region((0, 0), 0, (w, h))),
        )


def test_the_thumbnail_gate_scores_a_concatenated_series_as_the_single_one(
    concatenated_pair: ConcatenatedPair,
) -> None:
    (one, _), (parts, said) = (thumbnail_similarity(f) for f in _files(concatenated_pair))
    assert one is not None and parts is not None
    assert parts == pytest.approx(one, abs=1e-12)
    assert one > 0.9


def test_a_gap_between_parts_or_a_missing_part_is_a_problem(
    concatenated_pair: ConcatenatedPair, tmp_path: Path
) -> None:
    base = volume_levels(levels_of(concatenated_pair.concatenated.files))[0]
    copies = [Path(shutil.copy(p.path, tmp_path / p.path.name)) for p in base.parts]
    ds = pydicom.dcmread(copies[1])
    ds.ConcatenationFrameOffsetNumber = int(ds.ConcatenationFrameOffsetNumber) + 1
    ds.save_as(copies[1])
    (shifted,) = levels_of(copies)
    assert any("ConcatenationFrameOffsetNumber" in p for p in shifted.problems())
    (short,) = levels_of([p.path for p in base.parts[:-1]])
    assert any("tile grid" in p for p in short.problems())


def test_a_concatenated_conversion_gives_the_same_bytes_again(
    concatenated_pair: ConcatenatedPair, tmp_path: Path
) -> None:
    from dataclasses import replace

    from bms_pipeline.core.dicom.convert import ConversionSettings

    settings = replace(ConversionSettings(tile_size=128), concatenate_frames=CONCATENATED_FRAMES)
    again = convert_test_slide(concatenated_pair.truth, tmp_path, settings=settings)
    first = {f.name: f.read_bytes() for f in concatenated_pair.concatenated.files}
    assert {f.name: f.read_bytes() for f in again.files} == first


def test_concatenating_is_part_of_the_series_version_so_it_gets_new_uids() -> None:
    """The pipeline derives the UIDs from the series' version (`core.versions.sm_version`):
    the same pixels in other instances are other objects to a DICOMweb server."""
    from bms_pipeline.core.conventions import SmConventions
    from bms_pipeline.core.dicom.convert import ConversionSettings
    from bms_pipeline.core.versions import settings_part

    whole = ConversionSettings.for_collection(SmConventions())
    split = ConversionSettings.for_collection(SmConventions(concatenate_frames=4096))
    assert split.concatenate_frames == 4096 and whole.concatenate_frames is None
    assert settings_part(split) != settings_part(whole)


@pytest.mark.parametrize("value", [0, -1, True, 4.5, "4096"])
def test_concatenate_frames_must_be_a_positive_whole_number(value: object) -> None:
    from bms_pipeline.core.conventions import ConventionError, Conventions

    with pytest.raises(ConventionError, match=r"conventions\.sm: concatenate_frames must be"):
        Conventions.from_dict({"sm": {"concatenate_frames": value}})
    assert Conventions.from_dict({"sm": {"concatenate_frames": 4096}}).sm.concatenate_frames == 4096


def test_every_part_states_its_frames_positions_and_single_levels_stay_tiled_full(
    concatenated_pair: ConcatenatedPair,
) -> None:
    """The viewers (dicom-microscopy-viewer, Orthanc's WSI plugin) place a part's frames by
    their stated positions; a level of one instance keeps IDC's TILED_FULL."""
    for level in levels_of(concatenated_pair.concatenated.files):
        for part in level.parts:
            ds = pydicom.dcmread(part.path, stop_before_pixels=True)
            if not level.concatenated:
                assert ds.DimensionOrganizationType == "TILED_FULL"
                continue
            assert ds.DimensionOrganizationType == "TILED_SPARSE"
            items = ds.PerFrameFunctionalGroupsSequence
            assert len(items) == part.frames
            for index, item in enumerate(items):
                ty, tx = divmod(part.frame_offset + index, level.across)
                position = item.PlanePositionSlideSequence[0]
                assert position.ColumnPositionInTotalImagePixelMatrix == tx * level.tile_width + 1
                assert position.RowPositionInTotalImagePixelMatrix == ty * level.tile_height + 1
                assert list(item.FrameContentSequence[0].DimensionIndexValues) == [ty + 1, tx + 1]


def test_the_publication_gate_refuses_a_part_whose_positions_are_out_of_order(
    concatenated_pair: ConcatenatedPair, tmp_path: Path
) -> None:
    from bms_pipeline.core.dicom.idc_conversion import publication_gate
    from bms_pipeline.core.mirax.inventory import openslide_properties
    from bms_pipeline_tests.conftest import COLLECTION, SLIDE_ID

    files = [Path(shutil.copy(f, tmp_path / f.name)) for f in concatenated_pair.concatenated.files]
    gate = publication_gate(
        COLLECTION, SLIDE_ID, openslide_properties(concatenated_pair.truth.mrxs_path)
    )
    assert [p for p in gate.sm_problems(files) if p.check == "levels"] == []
    part = volume_levels(levels_of(files))[0].parts[1]
    ds = pydicom.dcmread(part.path)
    items = ds.PerFrameFunctionalGroupsSequence
    first, second = (item.PlanePositionSlideSequence[0] for item in items[:2])
    first.ColumnPositionInTotalImagePixelMatrix, second.ColumnPositionInTotalImagePixelMatrix = (
        second.ColumnPositionInTotalImagePixelMatrix,
        first.ColumnPositionInTotalImagePixelMatrix,
    )
    ds.save_as(part.path)
    refusing = [p for p in gate.sm_problems(files) if p.check == "levels"]
    assert refusing and refusing[0].refuses and part.path.name in refusing[0].detail


def test_positions_read_off_the_bytes_are_what_pydicom_reads(
    concatenated_pair: ConcatenatedPair,
) -> None:
    from bms_pipeline.core.dicom.levels import stated_positions

    base = volume_levels(levels_of(concatenated_pair.concatenated.files))[0]
    for part in base.parts:
        columns, rows = stated_positions(part.path)
        items = pydicom.dcmread(part.path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence
        planes = [item.PlanePositionSlideSequence[0] for item in items]
        assert columns.tolist() == [p.ColumnPositionInTotalImagePixelMatrix for p in planes]
        assert rows.tolist() == [p.RowPositionInTotalImagePixelMatrix for p in planes]
