"""The idc-index-like tables describe the converted series from their headers."""

from __future__ import annotations

from bms_pipeline.core.index import build_dicom_index
from bms_pipeline_tests.conftest import COLLECTION, SLIDE_ID, ConvertedSlide
from bms_pipeline_tests.helpers import PATIENT


def test_sm_series_is_indexed_with_stain_anatomy_and_diagnosis(converted: ConvertedSlide) -> None:
    out = converted.result.sm_dir.parent
    index = build_dicom_index(out, COLLECTION.collection_id, COLLECTION.doi, COLLECTION.license)
    (series,) = index.index.to_dicts()
    assert series["PatientID"] == PATIENT
    assert series["Modality"] == "SM"
    assert series["instanceCount"] == len(converted.result.files)
    assert series["source_DOI"] == COLLECTION.doi
    (sm,) = index.sm_index.to_dicts()
    assert sm["ContainerIdentifier"] == SLIDE_ID
    assert (sm["max_TotalPixelMatrixColumns"], sm["max_TotalPixelMatrixRows"]) == converted.truth.bounds[2:]
    assert sm["staining_usingSubstance_code_designator_value_str"] == "SCT:255803006"
    assert sm["primaryAnatomicStructure_code_designator_value_str"] == "SCT:14016003"
    assert sm["illuminationType_code_designator_value_str"] == "DCM:111744"
    assert sm["admittingDiagnosis_code_designator_value_str"] == "NCIt:C8644"
    assert sm["ObjectiveLensPower"] == 40.0
    assert index.sm_instance_index.height == len(converted.result.files)
    flavors = {tuple(t)[2] for t in index.sm_instance_index["ImageType"].to_list()}
    assert {"VOLUME", "THUMBNAIL", "OVERVIEW"} <= flavors
    assert index.ann_index.height == 0 and index.ann_group_index.height == 0
