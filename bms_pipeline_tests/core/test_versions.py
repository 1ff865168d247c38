"""Input versions: each edit changes exactly the versions of what it shapes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.core.conventions import Conventions, SmConventions
from bms_pipeline.core.dicom.convert import ConversionSettings
from bms_pipeline.core.versions import CollectionInputs, settings_part, slide_versions

CODE = {"sm_series": "2", "ann_series": "2", "dicom_validation": "1"}
HEADER = "cell_id,slide_id,roi_id,x1,y1,x2,y2,original_consensus_label,all_original_annotations\n"


def _inputs(tmp_path: Path, cells: str, clinical: str, collection=None) -> CollectionInputs:
    import yaml

    (tmp_path / "ann").mkdir(exist_ok=True)
    (tmp_path / "ann" / "cells.csv").write_text(HEADER + cells)
    header = "patient_id;gender;age;leukemia_type;leukemia_subtype;ncit_concept_code\n"
    rows = "".join(
        f"{line.split(';')[0] * 32};{line.split(';')[1]};{line.split(';')[2]};ALL;;C3167\n"
        for line in clinical.splitlines()
    )
    (tmp_path / "clinical.csv").write_text(header + rows)
    config = collection or CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
    return CollectionInputs.read(config, tmp_path / "clinical.csv", tmp_path / "ann")


def _versions(inputs: CollectionInputs, slide: str, patient: str, settings=None):
    """`patient` is a one-letter stand-in for its 32-character pseudonym."""
    settings = settings or ConversionSettings()
    return slide_versions(inputs, slide, patient * 32, "files", settings, CODE)


def test_a_moved_box_changes_its_slides_annotation_version_only(tmp_path: Path) -> None:
    rows = '1,A_1_bm,-1,10,10,20,20,lymphocyte,"lymphocyte,lymphocyte"\n'
    other = '2,B_1_bm,-1,10,10,20,20,lymphocyte,"lymphocyte,lymphocyte"\n'
    clinical = "A;female;5\nB;male;7\n"
    before = _inputs(tmp_path, rows + other, clinical)
    after = _inputs(tmp_path, rows.replace(",10,10,20,20,", ",15,10,25,20,") + other, clinical)
    a0, a1 = _versions(before, "A_1_bm", "A"), _versions(after, "A_1_bm", "A")
    b0, b1 = _versions(before, "B_1_bm", "B"), _versions(after, "B_1_bm", "B")
    assert a0["sm_series"] == a1["sm_series"]
    assert a1["ann_series"].changed_parts(a0["ann_series"].parts) == ["cells.csv"]
    assert a0["dicom_validation"].digest != a1["dicom_validation"].digest
    assert b0 == b1


def test_a_patients_row_changes_that_patients_images_and_what_follows(tmp_path: Path) -> None:
    cells = '1,A_1_bm,-1,10,10,20,20,lymphocyte,"lymphocyte,lymphocyte"\n'
    before = _inputs(tmp_path, cells, "A;female;5\nB;male;7\n")
    after = _inputs(tmp_path, cells, "A;male;5\nB;male;7\n")
    a0, a1 = _versions(before, "A_1_bm", "A"), _versions(after, "A_1_bm", "A")
    assert a1["sm_series"].changed_parts(a0["sm_series"].parts) == ["clinical.csv (patient row)"]
    assert a1["ann_series"].changed_parts(a0["ann_series"].parts) == ["sm_series"]
    assert _versions(before, "B_1_bm", "B") == _versions(after, "B_1_bm", "B")


def test_sm_conventions_change_the_images_and_ann_conventions_do_not(tmp_path: Path) -> None:
    import yaml

    base = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
    tiles = replace(base, conventions=Conventions(sm=SmConventions(tile_size=512)))
    cells = '1,A_1_bm,-1,10,10,20,20,lymphocyte,"lymphocyte,lymphocyte"\n'
    v0 = _versions(_inputs(tmp_path, cells, "A;female;5\n", base), "A_1_bm", "A")
    v1 = _versions(_inputs(tmp_path, cells, "A;female;5\n", tiles), "A_1_bm", "A")
    assert v1["sm_series"].changed_parts(v0["sm_series"].parts) == ["collection.yaml (SM)"]


def test_thread_count_is_not_an_input_but_tile_size_is() -> None:
    assert settings_part(ConversionSettings(workers=1)) == settings_part(
        ConversionSettings(workers=8)
    )
    assert settings_part(ConversionSettings(tile_size=512)) != settings_part(ConversionSettings())
