"""wsidicomizer conversion of generated slides, read back with wsidicom and pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from wsidicom import WsiDicom

from bms_pipeline.core.clinical.patients import PatientClinical
from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.core.dicom.convert import ConversionError, SlideIdentity, convert_slide
from bms_pipeline.core.dicom.metadata import (
    SlideContext,
    build_post_processor,
    build_pre_processor,
    build_wsi_metadata,
)
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.mirax.writer import MiraxGroundTruth
from bms_pipeline_tests.helpers import PATIENT, psnr, write_test_slide

COLLECTION = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
SLIDE_ID = f"{PATIENT}_1_bm"
CLINICAL = PatientClinical(
    patient_id=PATIENT, sex="F", age="007Y", leukemia_type="ALL", leukemia_subtype="B-ALL",
    ncit_code="C8644", ncit_meaning="B Acute Lymphoblastic Leukemia",
)


def _convert(truth: MiraxGroundTruth, out: Path, clinical: PatientClinical = CLINICAL):
    context = SlideContext(COLLECTION, SLIDE_ID, clinical, openslide_properties(truth.mrxs_path))
    return convert_slide(
        truth.mrxs_path,
        out / "sm",
        out / ".staging",
        SlideIdentity(COLLECTION.collection_id, PATIENT, SLIDE_ID),
        metadata=build_wsi_metadata(context),
        metadata_post_processor=build_post_processor(context),
        metadata_pre_processor=build_pre_processor(COLLECTION),
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("convert")
    truth = write_test_slide(root / "raw", slide_id=SLIDE_ID, image_format="PNG")
    return truth, _convert(truth, root / "out")


def test_base_level_is_the_openslide_bounds(converted) -> None:
    truth, result = converted
    assert (result.base_width, result.base_height) == truth.bounds[2:]
    with WsiDicom.open(result.sm_dir) as wsi:
        assert (wsi.size.width, wsi.size.height) == truth.bounds[2:]
        assert len(wsi.levels) >= 2


def test_level0_pixels_match_ground_truth_shifted_by_bounds(converted) -> None:
    truth, result = converted
    bx, by, bw, bh = truth.bounds
    with WsiDicom.open(result.sm_dir) as wsi:
        pixels = np.asarray(wsi.read_region((0, 0), 0, (bw, bh)).convert("RGB"))
    mask = truth.scanned_mask(bx, by, bw, bh)
    assert psnr(pixels[mask], truth.region(bx, by, bw, bh)[mask]) >= 30.0


def test_series_has_no_label_and_carries_patient_and_container(converted) -> None:
    _, result = converted
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in result.files]
    flavors = {ds.ImageType[2] for ds in datasets}
    assert "LABEL" not in flavors
    assert {"VOLUME", "THUMBNAIL", "OVERVIEW"} <= flavors
    assert {ds.PatientID for ds in datasets} == {PATIENT}
    assert {ds.ContainerIdentifier for ds in datasets} == {SLIDE_ID}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_slide_name_and_scanner_slide_id_do_not_reach_any_byte(converted) -> None:
    truth, result = converted
    for path in result.files:
        data = path.read_bytes()
        assert truth.spec.slide_name.encode() not in data, path
        assert truth.spec.mirax_slide_id.encode() not in data, path


def test_staging_is_empty_after_success(converted) -> None:
    _, result = converted
    staging = result.sm_dir.parent / ".staging"
    assert list(staging.iterdir()) == []


def test_rerun_reproduces_uids_without_extra_files(converted, tmp_path: Path) -> None:
    truth, result = converted
    again = _convert(truth, tmp_path)
    assert sorted(p.name for p in again.files) == sorted(p.name for p in result.files)
    first = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in result.files}
    second = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in again.files}
    assert first == second
    # Converting again into the same place replaces the series instead of adding to it.
    third = _convert(truth, tmp_path)
    assert sorted(p.name for p in (tmp_path / "sm").iterdir()) == sorted(p.name for p in third.files)


def test_failed_conversion_keeps_previous_series_and_names_the_slide(converted, tmp_path: Path) -> None:
    """Tiles destroyed after the completeness check: OpenSlide opens the slide, then fails
    mid-conversion on a tile (the last data file holds the associated images and stays)."""
    truth = write_test_slide(tmp_path / "raw", slide_id=SLIDE_ID, image_format="PNG")
    good = _convert(truth, tmp_path / "out")
    before = sorted(p.name for p in good.sm_dir.iterdir())
    for datafile in sorted(truth.mrxs_path.with_suffix("").glob("Data*.dat"))[:-1]:
        data = bytearray(datafile.read_bytes())
        data[300:] = b"\0" * (len(data) - 300)  # keep the header, destroy every image
        datafile.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=SLIDE_ID):
        _convert(truth, tmp_path / "out")
    assert sorted(p.name for p in good.sm_dir.iterdir()) == before
    assert list((tmp_path / "out" / ".staging").iterdir()) == []
