"""Tests for the synthetic clinical, lab and annotation tables (DESIGN.md sections 2 and 7)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bms_pipeline.core.annotations.consensus import NO_CONSENSUS, apply_rename, consensus_label
from bms_pipeline.core.reference import reference_path
from bms_pipeline.core.synthetic.tables import (
    NCIT_LEUKEMIA,
    AnnotationTruth,
    SlideAnnotationSource,
    make_patients,
    write_annotation_csvs,
    write_clinical_csv,
    write_lab_values_xlsx,
)

SEEDS = [0, 1, 2, 7, 42]
# A 3 x 2 grid of camera fields away from (0, 0), one of them not scanned (sparse scan).
FIELDS = [
    (5000 + col * 900, 3000 + row * 700, 1000, 800)
    for row in range(2)
    for col in range(3)
    if (col, row) != (1, 1)
]


def _read_csv_rows(path: Path, encoding: str = "utf-8", **kwargs) -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh, **kwargs))


def _lab_sheet(path: Path, sheet: str = "lab_values") -> pl.DataFrame:
    return pl.read_excel(path, sheet_name=sheet, engine="calamine", infer_schema_length=0)


def _slide(rng: np.random.Generator, slide_id: str, n_cells: int) -> SlideAnnotationSource:
    """Cells placed inside random fields, nuclei inside the cells."""
    fields = np.array(FIELDS, dtype=np.float64)[rng.integers(len(FIELDS), size=n_cells)]
    size = rng.uniform(15.0, 60.0, size=n_cells)
    x1 = fields[:, 0] + rng.uniform(0.0, 1.0, size=n_cells) * (fields[:, 2] - size)
    y1 = fields[:, 1] + rng.uniform(0.0, 1.0, size=n_cells) * (fields[:, 3] - size)
    boxes = np.stack([x1, y1, x1 + size, y1 + size], axis=1)
    inset = (size / 4.0)[:, None] * np.array([1.0, 1.0, -1.0, -1.0])
    return SlideAnnotationSource(
        slide_id=slide_id,
        field_rects=FIELDS,
        cell_boxes=boxes,
        cell_lineage=rng.integers(0, 3, size=n_cells),
        nucleus_boxes=boxes + inset,
    )


def _write_annotations(
    folder: Path, seed: int
) -> tuple[list[SlideAnnotationSource], AnnotationTruth]:
    rng = np.random.default_rng(seed)
    slides = [_slide(rng, f"{i:032X}_1_bm", n) for i, n in enumerate((40, 25, 0))]
    return slides, write_annotation_csvs(folder, slides, np.random.default_rng(seed))


def _write_all(folder: Path, seed: int) -> None:
    patients = make_patients(np.random.default_rng([seed, 1]), 5)
    write_clinical_csv(folder / "clinical.csv", patients, np.random.default_rng([seed, 2]))
    write_lab_values_xlsx(folder / "lab_values.xlsx", patients, np.random.default_rng([seed, 3]))
    _write_annotations(folder / "annotations", seed)


# --------------------------------------------------------------------------- patients


@pytest.mark.parametrize("seed", SEEDS)
def test_patients_have_unique_hex_pseudonyms_and_contract_attributes(seed):
    patients = make_patients(np.random.default_rng(seed), 20)

    assert len({p.patient_id for p in patients}) == 20
    for p in patients:
        assert re.fullmatch(r"[0-9A-F]{32}", p.patient_id)
        assert p.gender in {"female", "male", "other"}
        assert 1 <= p.age_years <= 18
        if p.ncit_code is None:
            assert (p.leukemia_type, p.leukemia_subtype, p.ncit_meaning) == (None, None, None)
        else:
            assert p.leukemia_type is not None
            assert p.ncit_meaning == NCIT_LEUKEMIA[p.ncit_code]


@pytest.mark.parametrize("seed", range(30))
def test_three_patients_include_one_without_diagnosis(seed):
    patients = make_patients(np.random.default_rng(seed), 3)

    assert any(p.ncit_code is None for p in patients)


def test_ncit_table_holds_the_contract_codes():
    assert NCIT_LEUKEMIA["C3167"] == "Acute Lymphoblastic Leukemia"
    assert NCIT_LEUKEMIA["C8644"] == "B Acute Lymphoblastic Leukemia"
    assert NCIT_LEUKEMIA["C3171"] == "Acute Myeloid Leukemia"
    assert NCIT_LEUKEMIA["C3174"] == "Chronic Myeloid Leukemia, BCR-ABL1 Positive"


# --------------------------------------------------------------------------- clinical.csv


@pytest.mark.parametrize("seed", SEEDS)
def test_clinical_csv_starts_with_bom_and_has_both_age_forms(tmp_path, seed):
    patients = make_patients(np.random.default_rng(seed), 4)
    path = tmp_path / "clinical.csv"

    write_clinical_csv(path, patients, np.random.default_rng(seed))

    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfpatient_id;gender;age;")
    frame = pl.read_csv(path, separator=";", infer_schema_length=0)
    assert frame.columns == [
        "patient_id",
        "gender",
        "age",
        "leukemia_type",
        "leukemia_subtype",
        "ncit_concept_code",
    ]
    ages = frame["age"].to_list()
    assert any(re.fullmatch(r"\d{1,2}", a) for a in ages)
    assert any(re.fullmatch(r"\d{3}Y", a) for a in ages)
    assert [int(a.rstrip("Y")) for a in ages] == [p.age_years for p in patients]


def test_clinical_csv_leaves_diagnosis_empty_for_patient_without_diagnosis(tmp_path):
    patients = make_patients(np.random.default_rng(3), 6)
    path = tmp_path / "clinical.csv"

    write_clinical_csv(path, patients, np.random.default_rng(3))

    rows = _read_csv_rows(path, encoding="utf-8-sig", delimiter=";")
    assert [r["patient_id"] for r in rows] == [p.patient_id for p in patients]
    for row, patient in zip(rows, patients, strict=True):
        assert row["ncit_concept_code"] == (patient.ncit_code or "")
        if patient.ncit_code is None:
            assert row["leukemia_type"] == row["leukemia_subtype"] == ""
    assert any(r["ncit_concept_code"] == "" for r in rows)


# --------------------------------------------------------------------------- lab_values.xlsx


def _lab_reference() -> list[dict[str, str]]:
    return _read_csv_rows(reference_path("loinc_lab_columns.csv"))


def test_lab_sheet_has_patient_id_then_loinc_columns_in_reference_order(tmp_path):
    patients = make_patients(np.random.default_rng(0), 4)
    path = tmp_path / "lab_values.xlsx"

    write_lab_values_xlsx(path, patients, np.random.default_rng(0))

    frame = _lab_sheet(path)
    assert frame.columns == ["patient_id", *(row["column"] for row in _lab_reference())]
    assert len(frame.columns) == 19
    assert frame["patient_id"].to_list() == [p.patient_id for p in patients]


def test_lab_cells_are_stored_as_text_not_numbers(tmp_path):
    # With schema inference on, any numeric cell would turn its column into a number type.
    path = tmp_path / "lab_values.xlsx"

    write_lab_values_xlsx(
        path, make_patients(np.random.default_rng(5), 12), np.random.default_rng(5)
    )

    frame = pl.read_excel(path, sheet_name="lab_values", engine="calamine")
    assert set(frame.dtypes) == {pl.String}


# Many seeds, because a kind can also occur by chance: only the forced rows make it certain.
@pytest.mark.parametrize("seed", range(100))
def test_three_patients_lab_values_hold_every_messy_kind(tmp_path, seed):
    path = tmp_path / "lab_values.xlsx"

    write_lab_values_xlsx(
        path, make_patients(np.random.default_rng(seed), 3), np.random.default_rng(seed)
    )

    frame = _lab_sheet(path).drop("patient_id")
    cells = [v for column in frame.columns for v in frame[column].to_list()]
    assert ">1800" in frame["lactate_dehydrogenase"].to_list()
    assert "<0,2" in frame["creatinine"].to_list()
    assert "<Nachweisgrenze" in cells
    assert any(v is not None and re.fullmatch(r"\d+,\d+", v) for v in cells)
    assert None in cells
    assert not any(v is not None and "." in v for v in cells)  # never a decimal point


@pytest.mark.parametrize("seed", range(30))
def test_hemoglobin_mixes_g_per_dl_and_g_per_l(tmp_path, seed):
    path = tmp_path / "lab_values.xlsx"

    write_lab_values_xlsx(
        path, make_patients(np.random.default_rng(seed), 3), np.random.default_rng(seed)
    )

    hb = [v for v in _lab_sheet(path)["hemoglobin"].to_list() if v is not None]
    g_per_dl = [float(v.replace(",", ".")) for v in hb if re.fullmatch(r"\d{1,2},\d", v)]
    g_per_l = [int(v) for v in hb if re.fullmatch(r"\d{2,3}", v)]
    assert g_per_dl and all(3.0 <= v <= 20.0 for v in g_per_dl)
    assert g_per_l and all(30 <= v <= 200 for v in g_per_l)
    assert len(g_per_dl) + len(g_per_l) == len(hb)


def test_idc_dictionary_labels_each_lab_column_with_its_loinc(tmp_path):
    path = tmp_path / "lab_values.xlsx"

    write_lab_values_xlsx(
        path, make_patients(np.random.default_rng(0), 3), np.random.default_rng(0)
    )

    dictionary = _lab_sheet(path, "idc_dictionary")
    assert dictionary.columns == ["column_formula", "column_label_formula"]
    expected = [
        (
            r["column"],
            f"LOINC:{r['loinc']} COMPONENT: {r['component']} DISPLAY_NAME: {r['display_name']}",
        )
        for r in _lab_reference()
    ]
    assert list(dictionary.iter_rows()) == expected
    assert dictionary["column_label_formula"][0] == (
        "LOINC:14804-9 COMPONENT: Lactate dehydrogenase "
        "DISPLAY_NAME: LDH Lactate to pyruvate reaction"
    )


# --------------------------------------------------------------------------- consensus rule


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["a", "a", "b"], "a"),
        (["b", "a", "a"], "a"),
        (["a", "b"], "a"),  # tie: the earliest session's label wins
        (["b", "a"], "b"),
        (["a", "b", "b", "a"], "a"),
        (["a", "b", "c"], NO_CONSENSUS),  # most frequent has a third of the votes
        (["a", "a", "b", "c", "d"], NO_CONSENSUS),  # 2 of 5 is below half
        (["a", "a", "b", "c"], "a"),  # exactly half is enough
        (["a"], NO_CONSENSUS),  # one expert is never a consensus
        ([], NO_CONSENSUS),
        (["a", " "], NO_CONSENSUS),  # a blank is no vote
        (["lymphoblast", "lymphoid_precursor_cell", "lymphocyte"], "lymphoid_precursor_cell"),
        (["myeloblast"], NO_CONSENSUS),
        (["other:Riesenthrombozyt", "other:Makrothrombozyt", "thrombocyte"], "giant_platelet"),
        (["lymphocyte", "monoblast", "monocytic_blast"], "monocytic_blast"),
    ],
)
def test_consensus_label_rule(labels, expected):
    assert consensus_label(labels) == expected


def test_renames_are_applied_before_voting():
    # Without renames the votes split 1:1:1; after them lymphoid_precursor_cell has two.
    assert consensus_label(["lymphoblast", "lymphocyte", "lymphoid_precursor_cell"]) == (
        "lymphoid_precursor_cell"
    )
    # And a tie is broken on renamed labels: the first session says myeloblast.
    assert consensus_label(["myeloblast", "promyelocyte"]) == "myeloid_precursor_cell"


def test_apply_rename_maps_every_reference_rename_and_keeps_current_labels():
    for row in _read_csv_rows(reference_path("label_renames.csv")):
        assert apply_rename(row["source_label"]) == row["label"]
    assert apply_rename("lymphocyte") == "lymphocyte"
    assert apply_rename("other:Riesenthrombozyt") == "giant_platelet"


# --------------------------------------------------------------------------- annotations


def _inside(inner, outer) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _field_boxes() -> list[tuple[int, int, int, int]]:
    return [(x, y, x + w, y + h) for x, y, w, h in FIELDS]


@pytest.mark.parametrize("seed", SEEDS)
def test_rois_lie_inside_a_scanned_field_with_unique_ids(tmp_path, seed):
    slides, _ = _write_annotations(tmp_path, seed)

    rois = pl.read_csv(tmp_path / "rois.csv")
    assert rois.columns == ["roi_id", "slide_id", "x1", "y1", "x2", "y2"]
    assert rois["roi_id"].is_unique().all()
    counts = dict(rois.group_by("slide_id").len().iter_rows())
    assert set(counts) == {s.slide_id for s in slides}
    assert all(1 <= n <= 3 for n in counts.values())
    for roi in rois.select("x1", "y1", "x2", "y2").iter_rows():
        assert roi[0] < roi[2] and roi[1] < roi[3]
        assert any(_inside(roi, field) for field in _field_boxes())


@pytest.mark.parametrize("seed", SEEDS)
def test_cell_roi_id_is_the_roi_that_contains_the_box(tmp_path, seed):
    _write_annotations(tmp_path, seed)

    rois = pl.read_csv(tmp_path / "rois.csv")
    cells = pl.read_csv(tmp_path / "cells.csv")
    inside_seen = outside_seen = False
    for cell in cells.iter_rows(named=True):
        box = (cell["x1"], cell["y1"], cell["x2"], cell["y2"])
        holders = [
            roi["roi_id"]
            for roi in rois.filter(pl.col("slide_id") == cell["slide_id"]).iter_rows(named=True)
            if _inside(box, (roi["x1"], roi["y1"], roi["x2"], roi["y2"]))
        ]
        assert len(holders) <= 1
        assert cell["roi_id"] == (holders[0] if holders else -1)
        inside_seen |= bool(holders)
        outside_seen |= not holders
    assert inside_seen and outside_seen


def test_cell_rows_are_the_input_boxes_rounded_outward(tmp_path):
    slides, _ = _write_annotations(tmp_path, 0)

    cells = pl.read_csv(tmp_path / "cells.csv")
    expected = np.concatenate([s.cell_boxes for s in slides])
    written = cells.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float64)
    assert cells["cell_id"].to_list() == list(range(1, len(expected) + 1))
    assert cells["slide_id"].to_list() == [s.slide_id for s in slides for _ in s.cell_boxes]
    assert np.all(written[:, :2] <= expected[:, :2]) and np.all(written[:, 2:] >= expected[:, 2:])
    assert np.all(np.abs(written - expected) < 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_written_csvs_read_back_as_the_returned_truth(tmp_path, seed):
    _, truth = _write_annotations(tmp_path, seed)

    assert pl.read_csv(tmp_path / "rois.csv").equals(truth.rois)
    assert pl.read_csv(tmp_path / "cells.csv").equals(truth.cells)
    assert pl.read_csv(tmp_path / "detections.csv").equals(truth.detections)


@pytest.mark.parametrize("seed", SEEDS)
def test_consensus_column_follows_the_rule_but_once_as_a_real_source_does(tmp_path, seed):
    """The rule on renamed labels, except one 1:1 tie where the source recorded the vote the
    rule did not pick (an expert broke the tie), so the disagreement report has work."""
    _write_annotations(tmp_path, seed)

    known = {r["label"] for r in _read_csv_rows(reference_path("cell_labels.csv"))}
    disagreements = []
    for row in _read_csv_rows(tmp_path / "cells.csv"):
        labels = row["all_original_annotations"].split(",")
        assert 1 <= len(labels) <= 4
        if row["original_consensus_label"] != consensus_label(labels):
            disagreements.append(labels)
            assert row["original_consensus_label"] in {apply_rename(v) for v in labels}
        assert {apply_rename(label) for label in labels} <= known
    assert len(disagreements) == 1 and len(disagreements[0]) == 2


@pytest.mark.parametrize("seed", SEEDS)
def test_cells_include_single_labels_split_votes_and_source_names(tmp_path, seed):
    _write_annotations(tmp_path, seed)

    annotations = [
        r["all_original_annotations"].split(",") for r in _read_csv_rows(tmp_path / "cells.csv")
    ]
    renamed = [[apply_rename(label) for label in labels] for labels in annotations]
    assert any(len(labels) == 1 for labels in annotations)
    assert any(len(labels) == 2 and labels[0] != labels[1] for labels in renamed)  # tie
    assert any(len(labels) >= 3 and consensus_label(labels) == NO_CONSENSUS for labels in renamed)
    flat = [label for labels in annotations for label in labels]
    assert any(label.startswith("other:") for label in flat)
    assert any(label in {"lymphoblast", "myeloblast", "monoblast"} for label in flat)
    # A majority that only exists after the renames.
    assert any(
        consensus_label(labels) != NO_CONSENSUS
        and max(labels.count(x) for x in labels) * 2 < len(labels)
        for labels in annotations
    )


def test_multi_label_field_is_quoted(tmp_path):
    _write_annotations(tmp_path, 0)

    lines = (tmp_path / "cells.csv").read_text(encoding="utf-8").splitlines()
    multi = [line for line in lines[1:] if line.count(",") > 8]
    assert multi and all(re.search(r',"[^"]+,[^"]+"$', line) for line in multi)


def test_detections_are_the_nucleus_boxes_with_scores(tmp_path):
    slides, _ = _write_annotations(tmp_path, 0)

    detections = pl.read_csv(tmp_path / "detections.csv")
    assert detections.columns == ["slide_id", "x1", "y1", "x2", "y2", "score"]
    nuclei = np.concatenate([s.nucleus_boxes for s in slides])
    np.testing.assert_allclose(
        detections.select("x1", "y1", "x2", "y2").to_numpy(), nuclei, atol=0.006
    )
    assert detections["score"].gt(0).all() and detections["score"].le(1).all()
    raw_scores = [r["score"] for r in _read_csv_rows(tmp_path / "detections.csv")]
    assert all(re.fullmatch(r"[01]\.\d{4}", s) for s in raw_scores)


def test_cell_outside_every_scanned_field_is_rejected(tmp_path):
    slide = _slide(np.random.default_rng(0), "A_1_bm", 5)
    boxes = slide.cell_boxes.copy()
    boxes[2] = [6100.0, 4000.0, 6140.0, 4040.0]  # only in the unscanned field (1, 1)
    bad = SlideAnnotationSource(
        slide.slide_id, slide.field_rects, boxes, slide.cell_lineage, slide.nucleus_boxes
    )

    with pytest.raises(ValueError, match="lie in no scanned field"):
        write_annotation_csvs(tmp_path, [bad], np.random.default_rng(0))


# --------------------------------------------------------------------------- determinism


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path):
    names = [
        "clinical.csv",
        "lab_values.xlsx",
        "annotations/rois.csv",
        "annotations/cells.csv",
        "annotations/detections.csv",
    ]
    _write_all(tmp_path / "a", 11)
    _write_all(tmp_path / "b", 11)
    _write_all(tmp_path / "c", 12)

    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
