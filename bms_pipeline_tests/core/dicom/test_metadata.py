"""Exact IDC attributes and codes on a converted slide (DESIGN.md section 4)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from bms_pipeline.core.clinical.patients import (
    ClinicalDataError,
    age_string,
    clinical_for,
    read_clinical_csv,
)
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.idc_conversion import convert_with_idc_metadata
from bms_pipeline.core.dicom.metadata import SlideContext
from bms_pipeline.core.dicom.overrides import OverrideError, load_overrides
from bms_pipeline.core.dicom.phi import identifiers_of, scan_files
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline_tests.conftest import (
    CLINICAL,
    COLLECTION,
    SLIDE_ID,
    ConvertedSlide,
    convert_test_slide,
)
from bms_pipeline_tests.helpers import PATIENT, write_test_slide


def _codes(sequence) -> set[tuple[str, str]]:
    return {(item.CodeValue, item.CodingSchemeDesignator) for item in sequence}


def _all_codes(ds: Dataset) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()

    def walk(d: Dataset) -> None:
        for element in d:
            if element.VR == "SQ":
                for item in element.value:
                    if "CodeValue" in item:
                        found.add((item.CodeValue, item.CodingSchemeDesignator))
                    walk(item)

    walk(ds)
    return found


@pytest.fixture(scope="module")
def volume(converted: ConvertedSlide) -> Dataset:
    for path in converted.result.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.ImageType[2] == "VOLUME" and ds.ImageType[0] == "ORIGINAL":
            return ds
    raise AssertionError("no base level")


def test_patient_and_deidentification(volume: Dataset) -> None:
    assert volume.PatientID == PATIENT
    assert volume.PatientSex == "F"
    assert volume.PatientAge == "007Y"
    assert volume.PatientName == ""
    assert volume.PatientIdentityRemoved == "YES"
    methods = _codes(volume.DeidentificationMethodCodeSequence)
    assert ("113100", "DCM") in methods
    assert ("113108", "DCM") in methods  # sex and age are kept
    assert ("113106", "DCM") not in methods  # dates are not kept by default


def test_clinical_trial_attributes(volume: Dataset) -> None:
    trial = COLLECTION.clinical_trial
    assert volume.ClinicalTrialSponsorName == trial.sponsor_name
    assert volume.ClinicalTrialProtocolID == trial.protocol_id
    assert volume.ClinicalTrialProtocolName == trial.protocol_name
    assert volume.ClinicalTrialSiteID == "" and volume.ClinicalTrialSiteName == ""
    assert volume.ClinicalTrialSubjectID == PATIENT
    assert volume.ClinicalTrialCoordinatingCenterName == "University Hospital Erlangen"
    (other,) = volume.OtherClinicalTrialProtocolIDsSequence
    assert other.ClinicalTrialProtocolID == "doi:10.5281/zenodo.14933087"
    assert other.IssuerOfClinicalTrialProtocolID == "DOI"


def test_diagnosis_from_ncit(volume: Dataset) -> None:
    (code,) = volume.AdmittingDiagnosesCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("C8644", "NCIt")
    assert code.CodeMeaning == "B Acute Lymphoblastic Leukemia"
    assert volume.AdmittingDiagnosesDescription == "B Acute Lymphoblastic Leukemia"


def test_specimen_description_codes(volume: Dataset) -> None:
    (description,) = volume.SpecimenDescriptionSequence
    assert description.SpecimenIdentifier == PATIENT  # IDC: the patient's aspirate
    assert _codes(description.PrimaryAnatomicStructureSequence) == {("14016003", "SCT")}
    codes = _all_codes(description)
    for expected in [
        ("14766002", "SCT"),  # Aspiration
        ("119295008", "SCT"),  # Aspirate
        ("434746001", "SCT"),  # Specimen vial
        ("448895004", "SCT"),  # Smear procedure
        ("255803006", "SCT"),  # May-Gruenwald Giemsa stain
        ("433466003", "SCT"),  # Microscope slide
    ]:
        assert expected in codes, expected
    assert volume.ContainerIdentifier == SLIDE_ID
    assert _codes(volume.ContainerTypeCodeSequence) == {("433466003", "SCT")}


def test_optics_equipment_and_icc(volume: Dataset, converted: ConvertedSlide) -> None:
    (path,) = volume.OpticalPathSequence
    assert _codes(path.IlluminationTypeCodeSequence) == {("111744", "DCM")}
    assert float(path.ObjectiveLensPower) == 40.0
    assert len(path.ICCProfile) > 0
    spec = converted.truth.spec
    assert volume.Manufacturer == "Mirax"  # as IDC published BMDeep
    assert volume.ManufacturerModelName == spec.scanner_hardware_version
    assert volume.DeviceSerialNumber == spec.scanner_hardware_id
    assert spec.scanner_software_version in volume.SoftwareVersions
    spacing = volume.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([spec.mpp / 1000] * 2, rel=1e-6)


def test_dates_removed_by_default_and_kept_when_allowed(volume: Dataset, tmp_path: Path) -> None:
    assert volume.StudyDate == ""
    assert "SeriesDate" not in volume
    assert "2019" not in str(volume.get("AcquisitionDateTime", ""))
    keep = replace(
        COLLECTION, deidentification=replace(COLLECTION.deidentification, keep_dates=True)
    )
    truth = write_test_slide(tmp_path / "raw", slide_id=SLIDE_ID)
    result = convert_test_slide(truth, tmp_path / "out", collection=keep)
    ds = pydicom.dcmread(result.files[0], stop_before_pixels=True)
    assert ds.StudyDate == truth.spec.creation_datetime.strftime("%Y%m%d")  # pyright: ignore[reportOptionalMemberAccess]
    assert ds.SeriesDate == ds.StudyDate
    assert ("113106", "DCM") in _codes(ds.DeidentificationMethodCodeSequence)


def test_patient_without_diagnosis_gets_no_diagnosis_attributes(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path / "raw", slide_id=SLIDE_ID)
    plain = replace(CLINICAL, ncit_code=None, ncit_meaning=None, leukemia_type=None)
    result = convert_test_slide(truth, tmp_path / "out", clinical=plain)
    for path in result.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "AdmittingDiagnosesCodeSequence" not in ds
        assert "AdmittingDiagnosesDescription" not in ds


def test_two_slides_of_one_patient_share_the_study_with_distinct_series_numbers(
    tmp_path: Path,
) -> None:
    series = {}
    for n in (1, 2):
        slide_id = f"{PATIENT}_{n}_bm"
        truth = write_test_slide(tmp_path / "raw", slide_id=slide_id, seed=n)
        result = convert_test_slide(truth, tmp_path / slide_id, slide_id=slide_id)
        ds = pydicom.dcmread(result.files[0], stop_before_pixels=True)
        series[n] = (ds.StudyInstanceUID, ds.SeriesInstanceUID, int(ds.SeriesNumber))
    assert series[1][0] == series[2][0]
    assert series[1][1] != series[2][1]
    assert series[1][2] != series[2][2]


def test_phi_scan_catches_a_planted_slide_id(converted: ConvertedSlide, tmp_path: Path) -> None:
    identifiers = identifiers_of(openslide_properties(converted.truth.mrxs_path))
    assert {"SLIDE_ID", "SLIDE_NAME", "OBJECTIVE_NAME"} <= set(identifiers)
    assert "SCANNER_HARDWARE_VERSION" not in identifiers  # allowed into the headers
    clean = list(converted.result.files)
    assert scan_files(clean, identifiers) == []
    planted = tmp_path / "planted.dcm"
    ds = pydicom.dcmread(clean[0])
    ds.ContainerIdentifier = identifiers["SLIDE_ID"]
    ds.save_as(planted)
    (hit,) = scan_files([*clean, planted], identifiers)
    assert hit.file == planted and hit.name == "SLIDE_ID"


@pytest.mark.parametrize(
    ("given", "expected"), [("7", "007Y"), ("007Y", "007Y"), ("12", "012Y"), ("015M", "015M")]
)
def test_age_string_accepts_years_and_age_strings(given: str, expected: str) -> None:
    assert age_string(given) == expected


def test_malformed_or_missing_clinical_row_names_patient_and_file(tmp_path: Path) -> None:
    path = tmp_path / "clinical.csv"
    header = "patient_id;gender;age;leukemia_type;leukemia_subtype;ncit_concept_code\n"
    path.write_text("\ufeff" + header + f"{PATIENT};female;seven;ALL;;C3167\n", encoding="utf-8")
    # A word in a cell is not echoed (a misplaced cell can hold a name); its place is named.
    with pytest.raises(ClinicalDataError, match=rf"{path}.*line 2.*{PATIENT}.*age") as caught:
        read_clinical_csv(path)
    assert "seven" not in str(caught.value)
    path.write_text(header + f"{PATIENT};female;7;ALL;;C9999\n", encoding="utf-8")
    with pytest.raises(ClinicalDataError, match="C9999"):
        read_clinical_csv(path)
    path.write_text(header, encoding="utf-8")
    with pytest.raises(ClinicalDataError, match=rf"{path}.*no clinical row for patient {PATIENT}"):
        clinical_for(path, PATIENT)


def test_collection_yaml_missing_keys_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="missing required keys"):
        CollectionConfig.from_dict({"collection_id": "x"})


def test_collection_and_slide_overrides_correct_pixel_spacing_and_equipment(tmp_path: Path) -> None:
    truth = write_test_slide(tmp_path / "raw", slide_id=SLIDE_ID)
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    (overrides / "collection.json").write_text(
        json.dumps(
            {
                "equipment": {"model_name": "Pannoramic MIDI II"},
                "pyramid": {"image": {"pixel_spacing": {"width": 0.0003, "height": 0.0003}}},
            }
        )
    )
    (overrides / f"{SLIDE_ID}.json").write_text(
        json.dumps({"pyramid": {"image": {"pixel_spacing": {"width": 0.00012, "height": 0.00012}}}})
    )
    loaded = load_overrides(tmp_path, SLIDE_ID)
    assert [o.path.name for o in loaded] == ["collection.json", f"{SLIDE_ID}.json"]
    context = SlideContext(
        COLLECTION, SLIDE_ID, CLINICAL, openslide_properties(truth.mrxs_path), loaded
    )
    result = convert_with_idc_metadata(
        truth.mrxs_path, tmp_path / "sm", tmp_path / ".staging", context
    )
    base = next(
        ds
        for ds in (pydicom.dcmread(f, stop_before_pixels=True) for f in result.files)
        if ds.ImageType[2] == "VOLUME" and ds.ImageType[0] == "ORIGINAL"
    )
    spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.00012, 0.00012])  # the slide's wins
    assert base.ManufacturerModelName == "Pannoramic MIDI II"  # from the collection file
    assert base.PatientID == PATIENT  # identity is not lost in the merge
    assert loaded[1].summary()["sets"] == {
        "pyramid": {"image": {"pixel_spacing": {"width": 0.00012, "height": 0.00012}}}
    }


def test_malformed_override_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "overrides").mkdir()
    bad = tmp_path / "overrides" / "collection.json"
    bad.write_text('{"pyramid": {"image": {"pixel_spacing": "wide"}}}')
    with pytest.raises(OverrideError, match="collection.json"):
        load_overrides(tmp_path, SLIDE_ID)
