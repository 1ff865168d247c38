"""wsidicomizer conversion of generated slides, read back with wsidicom and pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from wsidicom import WsiDicom

from bms_pipeline.core.dicom.convert import ConversionError
from bms_pipeline_tests.conftest import SLIDE_ID, ConvertedSlide, convert_test_slide
from bms_pipeline_tests.helpers import PATIENT, psnr, write_test_slide


def test_base_level_is_the_openslide_bounds(converted: ConvertedSlide) -> None:
    truth, result = converted.truth, converted.result
    assert (result.base_width, result.base_height) == truth.bounds[2:]
    with WsiDicom.open(result.sm_dir) as wsi:
        assert (wsi.size.width, wsi.size.height) == truth.bounds[2:]
        assert len(wsi.levels) >= 2


def test_level0_pixels_match_ground_truth_shifted_by_bounds(converted: ConvertedSlide) -> None:
    truth, result = converted.truth, converted.result
    bx, by, bw, bh = truth.bounds
    with WsiDicom.open(result.sm_dir) as wsi:
        pixels = np.asarray(wsi.read_region((0, 0), 0, (bw, bh)).convert("RGB"))
    mask = truth.scanned_mask(bx, by, bw, bh)
    assert psnr(pixels[mask], truth.region(bx, by, bw, bh)[mask]) >= 30.0


def test_series_has_no_label_and_carries_patient_and_container(converted: ConvertedSlide) -> None:
    result = converted.result
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in result.files]
    flavors = {ds.ImageType[2] for ds in datasets}
    assert "LABEL" not in flavors
    assert {"VOLUME", "THUMBNAIL", "OVERVIEW"} <= flavors
    assert {ds.PatientID for ds in datasets} == {PATIENT}
    assert {ds.ContainerIdentifier for ds in datasets} == {SLIDE_ID}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_slide_name_and_scanner_slide_id_do_not_reach_any_byte(converted: ConvertedSlide) -> None:
    truth, result = converted.truth, converted.result
    for path in result.files:
        data = path.read_bytes()
        assert truth.spec.slide_name.encode() not in data, path
        assert truth.spec.mirax_slide_id.encode() not in data, path


def test_staging_is_empty_after_success(converted: ConvertedSlide) -> None:
    result = converted.result
    staging = result.sm_dir.parent / ".staging"
    assert list(staging.iterdir()) == []


def test_rerun_reproduces_uids_without_extra_files(
    converted: ConvertedSlide, tmp_path: Path
) -> None:
    truth, result = converted.truth, converted.result
    again = convert_test_slide(truth, tmp_path)
    assert sorted(p.name for p in again.files) == sorted(p.name for p in result.files)
    first = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in result.files}
    second = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in again.files}
    assert first == second
    # Converting again into the same place replaces the series instead of adding to it.
    third = convert_test_slide(truth, tmp_path)
    assert sorted(p.name for p in (tmp_path / "sm").iterdir()) == sorted(
        p.name for p in third.files
    )


def test_failed_conversion_keeps_previous_series_and_names_the_slide(tmp_path: Path) -> None:
    """Tiles destroyed after the completeness check: OpenSlide opens the slide, then fails
    mid-conversion on a tile (the last data file holds the associated images and stays)."""
    truth = write_test_slide(tmp_path / "raw", slide_id=SLIDE_ID, image_format="PNG")
    good = convert_test_slide(truth, tmp_path / "out")
    before = sorted(p.name for p in good.sm_dir.iterdir())
    for datafile in sorted(truth.mrxs_path.with_suffix("").glob("Data*.dat"))[:-1]:
        data = bytearray(datafile.read_bytes())
        data[300:] = b"\0" * (len(data) - 300)  # keep the header, destroy every image
        datafile.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=SLIDE_ID):
        convert_test_slide(truth, tmp_path / "out")
    assert sorted(p.name for p in good.sm_dir.iterdir()) == before
    assert list((tmp_path / "out" / ".staging").iterdir()) == []
