"""Clinical and laboratory tables, IDC metadata and their outputs (DESIGN.md section 5).

Two inputs: the project's synthetic clinical.csv / lab_values.xlsx (broad, seeded), and a
hand-written pair whose every nasty cell is known, so each rule is asserted exactly.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import threading
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import xlsxwriter
import yaml

from bms_pipeline.core.atomic_outputs import OutputWriteError, write_duckdb_tables
from bms_pipeline.core.bigquery import BigQueryTarget
from bms_pipeline.core.clinical.idc_metadata import CLINICAL_INDEX
from bms_pipeline.core.clinical.lab_cells import (
    LAB_SHEET,
    format_rows,
    loinc_lab_columns,
    parse_lab_value,
    read_lab_values,
    reference_label,
)
from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_name, bigquery_names
from bms_pipeline.core.clinical.patients import ClinicalDataError
from bms_pipeline.core.clinical.qa import (
    column_metadata_matches_schema,
    dicom_patients_without_clinical,
    duplicate_patients,
    free_text_phi_columns,
    patients_missing_in_dicom,
)
from bms_pipeline.core.clinical.tables import ClinicalTables, build_clinical_tables, write_outputs
from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.synthetic.tables import (
    make_patients,
    write_clinical_csv,
    write_lab_values_xlsx,
)

COLLECTION = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
CID = COLLECTION.collection_id
CLINICAL = f"{CID}_clinical"
LABORATORY = f"{CID}_laboratory"
TARGET = BigQueryTarget(project="test-project", dataset="test_dataset")

# IDC's clinical ETL schemas, written out here independently of the module's constants.
IDC_COLUMN_METADATA = [
    ("collection_id", pl.String),
    ("case_col", pl.Boolean),
    ("table_name", pl.String),
    ("column", pl.String),
    ("column_label", pl.String),
    ("data_type", pl.String),
    ("original_column_headers", pl.List(pl.String)),
    (
        "values",
        pl.List(pl.Struct({"option_code": pl.String, "option_description": pl.String})),
    ),
    ("values_source", pl.String),
    ("files", pl.List(pl.String)),
    ("sheet_names", pl.List(pl.String)),
    ("batch", pl.List(pl.Int64)),
    ("column_numbers", pl.List(pl.Int64)),
]
IDC_TABLE_METADATA = [
    ("collection_id", pl.String),
    ("table_name", pl.String),
    ("table_description", pl.String),
    ("idc_version_table_added", pl.String),
    ("table_added_datetime", pl.String),
    ("post_process_src", pl.String),
    ("post_process_src_added_md5", pl.String),
    ("idc_version_table_prior", pl.String),
    ("post_process_src_prior_md5", pl.String),
    ("idc_version_table_updated", pl.String),
    ("table_updated_datetime", pl.String),
    ("post_process_src_updated_md5", pl.String),
    ("number_batches", pl.Int64),
    (
        "source_info",
        pl.List(
            pl.Struct(
                {
                    "srcs": pl.List(pl.String),
                    "md5": pl.String,
                    "table_last_modified": pl.String,
                    "table_size": pl.Int64,
                }
            )
        ),
    ),
]

# --------------------------------------------------------------------------- inputs

P1, P2, P3, P4, P5 = (f"{k:032X}" for k in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5))
LAB_COLUMNS = list(loinc_lab_columns())
# Hand-written lab cells: (patient, {column: cell}); unlisted columns get "1,0".
# None is an empty cell; an int is written as a numeric Excel cell, not text.
NASTY_ROWS: list[tuple[str, dict[str, str | int | None]]] = [
    (
        P1,  # Excel row 2
        {
            "lactate_dehydrogenase": ">1800",
            "creatinine": "<0,2",
            "urate": "<Nachweisgrenze",
            "hemoglobin": "10,2",
        },
    ),
    (P2, {"leukocytes": "12,5", "hemoglobin": "102", "platelets": None}),  # row 3
    (P3, {"hematocrit": "abc", "hemoglobin": " 9,8 ", "creatinine": "< 0,3"}),  # row 4
    (P4, {"hemoglobin": "130,5", "platelets": 250, "urate": "1.234,5"}),  # row 5
]


def write_nasty_clinical_csv(path: Path) -> None:
    """BOM, CRLF, ages in years and as DICOM Age String, a patient without diagnosis."""
    rows = [
        "patient_id;gender;age;leukemia_type;leukemia_subtype;ncit_concept_code",
        f"{P1};female;7;ALL;B-ALL;C8644",
        f"{P2};male;012Y;AML;;C3171",
        f"{P3};other;3;;;",
        f"{P4};female;006M;CML;BCR-ABL1 positive;C3174",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode("utf-8") + b"\r\n")


def write_nasty_lab_xlsx(
    path: Path,
    rows: list[tuple[str, dict[str, str | int | None]]] = NASTY_ROWS,
    dictionary: bool = True,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with xlsxwriter.Workbook(str(path)) as workbook:
        sheet = workbook.add_worksheet(LAB_SHEET)
        for c, header in enumerate(["patient_id", *LAB_COLUMNS]):
            sheet.write_string(0, c, header)
        for r, (patient, cells) in enumerate(rows, start=1):
            sheet.write_string(r, 0, patient)
            for c, column in enumerate(LAB_COLUMNS, start=1):
                cell = cells.get(column, "1,0")
                if isinstance(cell, int):
                    sheet.write_number(r, c, cell)
                elif cell is not None:
                    sheet.write_string(r, c, cell)
        if dictionary:
            labels = workbook.add_worksheet("idc_dictionary")
            labels.write_row(0, 0, ["column_formula", "column_label_formula"])
            for r, column in enumerate(LAB_COLUMNS, start=1):
                labels.write_row(r, 0, [column, reference_label(column)])


@pytest.fixture
def nasty(tmp_path: Path) -> DataLayout:
    layout = DataLayout.at(tmp_path / "nasty")
    write_nasty_clinical_csv(layout.clinical_csv)
    write_nasty_lab_xlsx(layout.lab_values_xlsx)
    return layout


@pytest.fixture
def nasty_tables(nasty: DataLayout) -> ClinicalTables:
    return build_clinical_tables(nasty, COLLECTION, target=TARGET)


def write_synthetic(root: Path, n: int, seed: int) -> DataLayout:
    layout = DataLayout.at(root)
    patients = make_patients(np.random.default_rng([seed, 1]), n)
    write_clinical_csv(layout.clinical_csv, patients, np.random.default_rng([seed, 2]))
    write_lab_values_xlsx(layout.lab_values_xlsx, patients, np.random.default_rng([seed, 3]))
    return layout


@pytest.fixture
def synthetic(tmp_path: Path) -> DataLayout:
    return write_synthetic(tmp_path / "synthetic", n=30, seed=5)


def lab_row(tables: ClinicalTables, patient: str) -> dict[str, object]:
    return tables.laboratory.filter(pl.col("dicom_patient_id") == patient).row(0, named=True)


def meta_row(tables: ClinicalTables, table: str, column: str) -> dict[str, object]:
    meta = tables.column_metadata
    return meta.filter(
        (pl.col("table_name") == TARGET.qualified(table)) & (pl.col("column") == column)
    ).row(0, named=True)


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("patient_id", "patient_id"),
        ("\ufeffpatient_id", "patient_id"),
        ("Eosinophils/100 leukocytes", "eosinophils_100_leukocytes"),
        ("Age-Years", "age_years"),
        ("24h Urin", "c_24h_urin"),
        ("Hämoglobin (g/dL)", "hmoglobin_g_dl"),
        ("  LDH  ", "ldh"),
        ("a.b,c;d", "abcd"),
        ("9", "c_9"),
    ],
)
def test_bigquery_name(header: str, name: str) -> None:
    assert bigquery_name(header) == name


def test_bigquery_names_refuse_empty_reserved_and_colliding_headers() -> None:
    with pytest.raises(ColumnNameError, match="no characters"):
        bigquery_name("(%)")
    with pytest.raises(ColumnNameError, match="reserves"):
        bigquery_name("_TABLE_x")
    with pytest.raises(ColumnNameError, match="'a-b' and 'A b'"):
        bigquery_names(["a-b", "A b"])


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (">1800", (1800.0, ">", "censored")),
        ("<0,2", (0.2, "<", "censored")),
        ("< 0,3", (0.3, "<", "censored")),
        ("<Nachweisgrenze", (None, "<", "below_detection_limit")),
        ("12,5", (12.5, None, "number")),
        (" 9,8 ", (9.8, None, "number")),
        ("10.2", (10.2, None, "number")),  # how calamine renders a numeric cell
        ("1.234,5", (1234.5, None, "number")),
        ("102", (102.0, None, "number")),
        ("", (None, None, "blank")),
        (None, (None, None, "blank")),
        ("abc", (None, None, "invalid")),
        ("<", (None, None, "invalid")),
        ("12,5 g/dl", (None, None, "invalid")),
    ],
)
def test_parse_lab_value(cell: str | None, expected: tuple[object, ...]) -> None:
    value, qualifier, kind = parse_lab_value(cell)
    assert kind == expected[2]
    assert qualifier == expected[1]
    assert value == pytest.approx(expected[0]) if expected[0] is not None else value is None


def test_format_rows_compresses_runs() -> None:
    assert format_rows([9, 3, 4, 5, 11]) == "3-5, 9, 11"
    assert format_rows([]) == ""


# --------------------------------------------------------------------------- laboratory


def test_censored_strings_survive_exactly_with_typed_companions(
    nasty_tables: ClinicalTables,
) -> None:
    p1, p2, p3 = (lab_row(nasty_tables, p) for p in (P1, P2, P3))
    assert (p1["lactate_dehydrogenase"], p1["lactate_dehydrogenase_value"]) == (">1800", 1800.0)
    assert p1["lactate_dehydrogenase_qualifier"] == ">"
    assert (p1["creatinine"], p1["creatinine_value"], p1["creatinine_qualifier"]) == (
        "<0,2",
        pytest.approx(0.2),
        "<",
    )
    assert (p3["creatinine"], p3["creatinine_qualifier"]) == ("< 0,3", "<")
    assert (p1["urate"], p1["urate_value"], p1["urate_qualifier"]) == (
        "<Nachweisgrenze",
        None,
        "<",
    )
    assert (p2["leukocytes"], p2["leukocytes_value"], p2["leukocytes_qualifier"]) == (
        "12,5",
        12.5,
        None,
    )
    assert (p2["platelets"], p2["platelets_value"], p2["platelets_qualifier"]) == (
        None,
        None,
        None,
    )
    assert p3["hemoglobin"] == " 9,8 "  # whitespace kept in the string column
    assert p3["hemoglobin_value"] == pytest.approx(9.8)


def test_numeric_excel_cells_and_german_grouping(nasty_tables: ClinicalTables) -> None:
    p4 = lab_row(nasty_tables, P4)
    assert (p4["platelets"], p4["platelets_value"]) == ("250", 250.0)
    assert (p4["urate"], p4["urate_value"]) == ("1.234,5", 1234.5)


def test_hemoglobin_in_g_per_l_is_normalised_to_g_per_dl(nasty_tables: ClinicalTables) -> None:
    p1, p2 = lab_row(nasty_tables, P1), lab_row(nasty_tables, P2)
    assert (p1["hemoglobin"], p1["hemoglobin_value"]) == ("10,2", 10.2)
    assert (p2["hemoglobin"], p2["hemoglobin_value"]) == ("102", 10.2)  # exactly, no float noise


def test_hemoglobin_normalisation_is_recorded_in_column_metadata(
    nasty_tables: ClinicalTables,
) -> None:
    row = meta_row(nasty_tables, LABORATORY, "hemoglobin_value")
    assert "g/dL" in row["column_label"]  # pyright: ignore[reportOperatorIssue]
    source = row["values_source"]
    assert "integer-looking source value above 25 is g/L and is divided by 10" in source  # pyright: ignore[reportOperatorIssue]
    assert "1 value(s) changed (sheet 'lab_values' Excel rows 3)" in source  # pyright: ignore[reportOperatorIssue]
    assert nasty_tables.lab is not None
    (normalisation,) = nasty_tables.lab.normalisations
    assert normalisation.rows == (3,)
    # the string column is untouched and says nothing about a conversion
    assert "divided" not in (  # pyright: ignore[reportOperatorIssue]
        meta_row(nasty_tables, LABORATORY, "hemoglobin")["values_source"] or ""
    )


def test_ambiguous_hemoglobin_is_reported_not_converted(nasty_tables: ClinicalTables) -> None:
    assert lab_row(nasty_tables, P4)["hemoglobin_value"] == pytest.approx(130.5)
    assert any(
        "row 5, column 'hemoglobin'" in w and "neither clearly g/dL nor g/L" in w
        for w in nasty_tables.warnings
    )


def test_garbage_cell_is_a_warning_naming_sheet_row_and_column_never_its_content(
    nasty_tables: ClinicalTables,
) -> None:
    p3 = lab_row(nasty_tables, P3)
    # Not a value: nothing of it is published, not even the source string.
    assert (p3["hematocrit"], p3["hematocrit_value"], p3["hematocrit_qualifier"]) == (
        None,
        None,
        None,
    )
    garbage = [w for w in nasty_tables.warnings if "row 4, column 'hematocrit'" in w]
    assert len(garbage) == 1
    assert "sheet 'lab_values', row 4, column 'hematocrit' (D)" in garbage[0]
    assert not any("abc" in w for w in nasty_tables.warnings)


def test_garbage_cell_is_an_error_in_strict_mode(nasty: DataLayout) -> None:
    with pytest.raises(ClinicalDataError, match=r"sheet 'lab_values', row 4, column 'hematocrit'"):
        build_clinical_tables(nasty, COLLECTION, strict=True, target=TARGET)


def test_below_detection_limit_is_reported(nasty_tables: ClinicalTables) -> None:
    notes = [w for w in nasty_tables.warnings if "below the detection limit" in w]
    assert any("column 'urate'" in w and "Excel rows 2" in w for w in notes)


def test_blank_patient_id_is_an_error(tmp_path: Path) -> None:
    layout = DataLayout.at(tmp_path)
    write_nasty_clinical_csv(layout.clinical_csv)
    write_nasty_lab_xlsx(layout.lab_values_xlsx, rows=[*NASTY_ROWS, ("  ", {})])
    with pytest.raises(ClinicalDataError, match=r"blank patient id in Excel row\(s\) 6"):
        read_lab_values(layout.lab_values_xlsx)


def test_labels_come_from_idc_dictionary_sheet(nasty_tables: ClinicalTables) -> None:
    label = meta_row(nasty_tables, LABORATORY, "lactate_dehydrogenase")["column_label"]
    assert label == (
        "LOINC:14804-9 COMPONENT: Lactate dehydrogenase "
        "DISPLAY_NAME: LDH Lactate to pyruvate reaction"
    )


def test_missing_dictionary_sheet_falls_back_to_shipped_labels_with_warning(
    tmp_path: Path,
) -> None:
    layout = DataLayout.at(tmp_path)
    write_nasty_clinical_csv(layout.clinical_csv)
    write_nasty_lab_xlsx(layout.lab_values_xlsx, dictionary=False)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    assert meta_row(tables, LABORATORY, "hemoglobin")["column_label"].startswith("LOINC:718-7")  # pyright: ignore[reportAttributeAccessIssue]
    assert any("no sheet 'idc_dictionary'" in w for w in tables.warnings)


# --------------------------------------------------------------------------- clinical


def test_clinical_table_columns_types_and_both_age_forms(nasty_tables: ClinicalTables) -> None:
    clinical = nasty_tables.clinical
    assert list(clinical.schema.items()) == [
        ("dicom_patient_id", pl.String),
        ("source_batch", pl.Int64),
        ("patient_id", pl.String),
        ("gender", pl.String),
        ("dicom_patient_sex", pl.String),
        ("age", pl.String),
        ("dicom_patient_age", pl.String),
        ("age_years", pl.Int64),
        ("leukemia_type", pl.String),
        ("leukemia_subtype", pl.String),
        ("ncit_concept_code", pl.String),
        ("ncit_concept_meaning", pl.String),
    ]
    rows = {r["dicom_patient_id"]: r for r in clinical.iter_rows(named=True)}
    assert (rows[P1]["age"], rows[P1]["dicom_patient_age"], rows[P1]["age_years"]) == (
        "7",
        "007Y",
        7,
    )
    assert (rows[P2]["age"], rows[P2]["dicom_patient_age"], rows[P2]["age_years"]) == (
        "012Y",
        "012Y",
        12,
    )
    assert rows[P4]["age_years"] == 0  # 006M
    assert (rows[P1]["gender"], rows[P1]["dicom_patient_sex"]) == ("female", "F")
    assert rows[P1]["ncit_concept_meaning"] == "B Acute Lymphoblastic Leukemia"
    assert rows[P3]["ncit_concept_code"] is None and rows[P3]["leukemia_type"] is None
    assert set(clinical["source_batch"]) == {0}


def test_laboratory_table_order_and_types(nasty_tables: ClinicalTables) -> None:
    expected = [
        ("dicom_patient_id", pl.String),
        ("source_batch", pl.Int64),
        ("patient_id", pl.String),
    ]
    for column in LAB_COLUMNS:
        expected += [
            (column, pl.String),
            (f"{column}_value", pl.Float64),
            (f"{column}_qualifier", pl.String),
        ]
    assert list(nasty_tables.laboratory.schema.items()) == expected


# --------------------------------------------------------------------------- IDC metadata


def test_metadata_tables_have_idc_schemas(nasty_tables: ClinicalTables) -> None:
    assert list(nasty_tables.column_metadata.schema.items()) == IDC_COLUMN_METADATA
    assert list(nasty_tables.table_metadata.schema.items()) == IDC_TABLE_METADATA


def test_column_metadata_matches_every_table(
    nasty_tables: ClinicalTables, synthetic: DataLayout
) -> None:
    assert column_metadata_matches_schema(nasty_tables) == []
    synthetic_tables = build_clinical_tables(synthetic, COLLECTION, target=TARGET)
    assert column_metadata_matches_schema(synthetic_tables) == []


def test_column_metadata_mismatch_is_detected(nasty_tables: ClinicalTables) -> None:
    broken = ClinicalTables(
        **{
            **nasty_tables.__dict__,
            "column_metadata": nasty_tables.column_metadata.filter(
                pl.col("column") != "urate_value"
            ),
        }
    )
    problems = column_metadata_matches_schema(broken)
    assert any(LABORATORY in p for p in problems)


def test_provenance_columns_and_case_col_as_idc_s_clinical_etl_writes_them(
    nasty_tables: ClinicalTables,
) -> None:
    # IDC's ETL (ImagingDataCommons/etl_flow, clinical): DICOM_LABEL, SOURCE_BATCH_LABEL, and
    # case_col 'yes' for the source's patient column only.
    meta = nasty_tables.column_metadata
    for table in (CLINICAL, LABORATORY):
        rows = meta.filter(pl.col("table_name") == TARGET.qualified(table))
        assert rows.filter(pl.col("case_col"))["column"].to_list() == ["patient_id"]
        for column, label in (
            ("dicom_patient_id", "idc_provenance_dicom_patient_id"),
            ("source_batch", "idc_provenance_source_batch"),
        ):
            row = meta_row(nasty_tables, table, column)
            assert row["column_label"] == label
            assert row["original_column_headers"] == [label]
            assert (row["files"], row["sheet_names"], row["batch"], row["column_numbers"]) == (
                [],
                [],
                [],
                [],
            )
    row = meta_row(nasty_tables, LABORATORY, "patient_id")
    assert row["original_column_headers"] == ["patient_id"]
    assert row["column_numbers"] == [0]
    assert row["files"] == ["raw/clinical/lab_values.xlsx"]
    assert row["sheet_names"] == ["lab_values"]
    assert (  # pyright: ignore[reportOperatorIssue]
        "surrounding whitespace removed"
        in meta_row(nasty_tables, CLINICAL, "dicom_patient_id")["values_source"]
    )
    hb = meta_row(nasty_tables, LABORATORY, "hemoglobin_qualifier")
    assert hb["column_numbers"] == [1 + LAB_COLUMNS.index("hemoglobin")]
    assert hb["batch"] == [0]


def test_case_col_keeps_the_source_string_and_dicom_patient_id_is_it_stripped(
    tmp_path: Path,
) -> None:
    layout = DataLayout.at(tmp_path)
    write_nasty_clinical_csv(layout.clinical_csv)
    text = layout.clinical_csv.read_bytes().replace(f"\n{P2};".encode(), f"\n {P2} ;".encode())
    layout.clinical_csv.write_bytes(text)
    padded = [
        (f"{P1}  ", cells) if patient == P1 else (patient, cells) for patient, cells in NASTY_ROWS
    ]
    write_nasty_lab_xlsx(layout.lab_values_xlsx, rows=padded)
    tables = build_clinical_tables(layout, COLLECTION, target=TARGET)
    clinical = dict(
        zip(tables.clinical["dicom_patient_id"], tables.clinical["patient_id"], strict=True)
    )
    assert clinical[P2] == f" {P2} " and clinical[P1] == P1
    lab = dict(
        zip(tables.laboratory["dicom_patient_id"], tables.laboratory["patient_id"], strict=True)
    )
    assert lab[P1] == f"{P1}  "
    assert column_metadata_matches_schema(tables) == []
    # A dicom_patient_id that is not its case column stripped, or a second case_col, is found.
    wrong = tables.laboratory.with_columns(
        pl.when(pl.col("dicom_patient_id") == P2)
        .then(pl.lit(P3))
        .otherwise(pl.col("dicom_patient_id"))
        .alias("dicom_patient_id")
    )
    broken = ClinicalTables(**{**tables.__dict__, "laboratory": wrong})
    assert any(
        "not case_col 'patient_id' stripped" in p for p in column_metadata_matches_schema(broken)
    )
    two = tables.column_metadata.with_columns(
        (pl.col("case_col") | (pl.col("column") == "gender")).alias("case_col")
    )
    broken = ClinicalTables(**{**tables.__dict__, "column_metadata": two})
    assert any(
        "case_col marks ['patient_id', 'gender']" in p
        for p in column_metadata_matches_schema(broken)
    )
    relabelled = tables.column_metadata.with_columns(
        pl.when(pl.col("column") == "source_batch")
        .then(pl.lit("batch"))
        .otherwise(pl.col("column_label"))
        .alias("column_label")
    )
    broken = ClinicalTables(**{**tables.__dict__, "column_metadata": relabelled})
    assert any("idc_provenance_source_batch" in p for p in column_metadata_matches_schema(broken))


def test_table_name_is_idc_s_qualified_form_only_with_a_bigquery_target(
    nasty: DataLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BMS_BQ_PROJECT", "BMS_BQ_DATASET"):
        monkeypatch.delenv(name, raising=False)
    bare = build_clinical_tables(nasty, COLLECTION)
    assert not bare.target.configured
    assert set(bare.table_metadata["table_name"]) == {CLINICAL, LABORATORY}
    assert set(bare.column_metadata["table_name"]) == {CLINICAL, LABORATORY}
    assert column_metadata_matches_schema(bare) == []
    monkeypatch.setenv("BMS_BQ_PROJECT", "my-project")
    monkeypatch.setenv("BMS_BQ_DATASET", "idc_v25_clinical")
    qualified = build_clinical_tables(nasty, COLLECTION)
    assert set(qualified.table_metadata["table_name"]) == {
        f"my-project.idc_v25_clinical.{CLINICAL}",
        f"my-project.idc_v25_clinical.{LABORATORY}",
    }
    # idc-index's clinical_index takes SPLIT(table_name, '.')[SAFE_OFFSET(2)] as the short name.
    assert {n.split(".")[2] for n in qualified.column_metadata["table_name"]} == {
        CLINICAL,
        LABORATORY,
    }
    monkeypatch.delenv("BMS_BQ_DATASET")
    with pytest.raises(ValueError, match="set both BMS_BQ_PROJECT and BMS_BQ_DATASET"):
        build_clinical_tables(nasty, COLLECTION)


def test_load_script_without_a_target_refuses_to_guess(
    nasty: DataLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BMS_BQ_PROJECT", "BMS_BQ_DATASET"):
        monkeypatch.delenv(name, raising=False)
    written = write_outputs(build_clinical_tables(nasty, COLLECTION), nasty)
    result = subprocess.run(
        ["bash", str(written.load_script)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode != 0 and "set BMS_BQ_PROJECT" in result.stderr


def test_clinical_index_view_has_idc_index_s_schema(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    import idc_index_data

    wheel = Path(idc_index_data.__file__).parent / "clinical_index_schema.json"
    columns = json.loads(wheel.read_text())["columns"]
    expected = [(c["name"], c["type"], c.get("mode") or "NULLABLE") for c in columns]
    written = write_outputs(nasty_tables, nasty)
    with duckdb.connect(str(written.duckdb), read_only=True) as con:
        described = con.execute(f"DESCRIBE {CLINICAL_INDEX}").fetchall()
    mapped = [
        (
            name,
            "RECORD"
            if type_.startswith("STRUCT")
            else {"VARCHAR": "STRING"}[type_.removesuffix("[]")],
            "REPEATED" if type_.endswith("[]") else "NULLABLE",
        )
        for name, type_, *_ in described
    ]
    assert mapped == expected


def test_values_listed_only_for_twenty_or_fewer_distinct(synthetic: DataLayout) -> None:
    tables = build_clinical_tables(synthetic, COLLECTION, target=TARGET)
    short = pl.col("table_name").str.split(".").list.last()
    for row in tables.column_metadata.with_columns(short.alias("t")).iter_rows(named=True):
        distinct = tables.data_tables[row["t"]][row["column"]].drop_nulls().n_unique()
        assert bool(row["values"]) == (0 < distinct <= 20), (row["column"], distinct)
    assert meta_row(tables, CLINICAL, "dicom_patient_id")["values"] == []  # 30 patients
    codes = meta_row(tables, CLINICAL, "ncit_concept_code")["values"]
    assert {"option_code": "C3171", "option_description": "Acute Myeloid Leukemia"} in codes  # pyright: ignore[reportOperatorIssue]


def test_table_metadata_records_sources(nasty_tables: ClinicalTables, nasty: DataLayout) -> None:
    rows = {r["table_name"]: r for r in nasty_tables.table_metadata.iter_rows(named=True)}
    lab = rows[TARGET.qualified(LABORATORY)]
    assert lab["post_process_src"] == "raw/clinical/lab_values.xlsx"
    assert lab["number_batches"] == 1
    (info,) = lab["source_info"]
    assert info["srcs"] == ["raw/clinical/lab_values.xlsx"]
    assert info["table_size"] == nasty.lab_values_xlsx.stat().st_size
    assert info["md5"] == lab["post_process_src_added_md5"]


def test_synthetic_lab_sheet_strings_survive_exactly(synthetic: DataLayout) -> None:
    tables = build_clinical_tables(synthetic, COLLECTION, target=TARGET)
    sheet = pl.read_excel(
        synthetic.lab_values_xlsx, sheet_name=LAB_SHEET, engine="calamine", infer_schema_length=0
    )
    assert tables.laboratory["dicom_patient_id"].to_list() == sheet["patient_id"].to_list()
    assert tables.laboratory["patient_id"].to_list() == sheet["patient_id"].to_list()
    for column in LAB_COLUMNS:
        assert tables.laboratory[column].to_list() == sheet[column].to_list(), column
    assert not any("cannot be understood" in w or "not a number" in w for w in tables.warnings)
    censored = tables.laboratory.filter(pl.col("creatinine").str.starts_with("<"))
    assert (censored["creatinine_qualifier"] == "<").all()


# --------------------------------------------------------------------------- QA helpers


def test_patient_cross_checks(nasty_tables: ClinicalTables) -> None:
    dicom = [P1, P2, P5]
    assert patients_missing_in_dicom(nasty_tables.clinical, dicom) == sorted([P3, P4])
    assert dicom_patients_without_clinical(nasty_tables.clinical, dicom) == [P5]
    assert duplicate_patients(nasty_tables.clinical) == []
    doubled = pl.concat([nasty_tables.laboratory, nasty_tables.laboratory.head(1)])
    assert duplicate_patients(doubled) == [P1]


def test_free_text_phi_columns() -> None:
    frame = pl.DataFrame(
        {
            "dicom_patient_id": [P1, P2],
            "leukemia_type": ["ALL", "AML"],
            "patient_name": ["x", "y"],
            "notes_free": ["a", "b"],
            "history_text": [None, None],
            "story": ["short", "the patient came in on a rainy day with her mother"],
            "seen": ["12.03.2019", "x"],
            "lab_value": [1.0, 2.0],
        }
    )
    assert free_text_phi_columns(frame) == [
        "patient_name",
        "notes_free",
        "history_text",
        "story",
        "seen",
    ]
    assert "story" not in free_text_phi_columns(frame, allowed=["story"])


def test_built_tables_have_no_phi_columns(nasty_tables: ClinicalTables) -> None:
    assert free_text_phi_columns(nasty_tables.clinical) == []
    assert free_text_phi_columns(nasty_tables.laboratory) == []


# --------------------------------------------------------------------------- outputs


def test_write_outputs_parquet_duckdb_schemas_and_load_script(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    written = write_outputs(nasty_tables, nasty)
    names = [CLINICAL, LABORATORY, "table_metadata", "column_metadata"]
    assert sorted(written.parquet) == sorted(names)
    for name in names:
        assert pl.read_parquet(written.parquet[name]).equals(nasty_tables.tables[name])
    con = duckdb.connect(str(written.duckdb), read_only=True)
    try:
        joined = con.execute(
            f"SELECT c.dicom_patient_id, c.age_years, l.hemoglobin, l.hemoglobin_value "
            f"FROM {CLINICAL} c JOIN {LABORATORY} l USING (dicom_patient_id) "
            "ORDER BY c.dicom_patient_id"
        ).fetchall()
        assert joined[1] == (P2, 12, "102", 10.2)
        cursor = con.execute(
            f"SELECT * FROM {CLINICAL_INDEX} WHERE \"column\" = 'dicom_patient_sex'"
        )
        index = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))  # pyright: ignore[reportArgumentType, reportCallIssue]
        assert list(index) == [
            "collection_id",
            "table_name",
            "short_table_name",
            "column",
            "column_label",
            "values",
        ]
        assert index["short_table_name"] == CLINICAL  # pyright: ignore[reportArgumentType]
        assert index["table_name"] == f"test-project.test_dataset.{CLINICAL}"  # pyright: ignore[reportArgumentType]
        assert {"option_code": "F", "option_description": "female"} in index["values"]  # pyright: ignore[reportArgumentType, reportOperatorIssue]
    finally:
        con.close()

    schema = json.loads(written.schemas["column_metadata"].read_text())
    fields = {f["name"]: f for f in schema}
    assert [f["name"] for f in schema] == [n for n, _ in IDC_COLUMN_METADATA]
    assert (fields["values"]["type"], fields["values"]["mode"]) == ("RECORD", "REPEATED")
    assert [f["name"] for f in fields["values"]["fields"]] == ["option_code", "option_description"]
    assert (fields["batch"]["type"], fields["batch"]["mode"]) == ("INTEGER", "REPEATED")
    assert (fields["case_col"]["type"], fields["case_col"]["mode"]) == ("BOOLEAN", "NULLABLE")
    info = {f["name"]: f for f in json.loads(written.schemas["table_metadata"].read_text())}
    assert (info["source_info"]["type"], info["source_info"]["mode"]) == ("RECORD", "REPEATED")
    lab = {f["name"]: f for f in json.loads(written.schemas[LABORATORY].read_text())}
    assert lab["hemoglobin_value"]["type"] == "FLOAT"
    assert lab["source_batch"]["type"] == "INTEGER"
    assert lab["lactate_dehydrogenase"]["description"].startswith("LOINC:14804-9")

    script = written.load_script.read_text()
    assert written.load_script.stat().st_mode & 0o111
    loads = [line for line in script.splitlines() if line.startswith("bq load")]
    assert len(loads) == 4
    for name in names:
        (line,) = [x for x in loads if f'.{name}"' in x]
        assert "--source_format=PARQUET" in line and "--replace" in line
        assert f"{name}.parquet" in line and f"{name}.schema.json" in line
    assert 'DATASET="${BMS_BQ_DATASET:-test_dataset}"' in script
    subprocess.run(["bash", "-n", str(written.load_script)], check=True)
    leftovers = [p for p in nasty.out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_duckdb_keeps_tables_other_writers_put_there(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    sm_index = nasty.tables_dir / "sm_index.parquet"
    sm_index.parent.mkdir(parents=True)
    pl.DataFrame({"PatientID": [P1, P2], "SeriesInstanceUID": ["1.2.3", "1.2.4"]}).write_parquet(
        sm_index
    )
    write_duckdb_tables(nasty.duckdb_path, {"sm_index": sm_index})
    write_outputs(nasty_tables, nasty)
    write_outputs(nasty_tables, nasty)  # a rerun replaces its own tables, keeps the others
    con = duckdb.connect(str(nasty.duckdb_path), read_only=True)
    try:
        rows = con.execute(
            f"SELECT s.SeriesInstanceUID, c.gender, l.leukocytes_value FROM sm_index s "
            f"JOIN {CLINICAL} c ON c.dicom_patient_id = s.PatientID "
            f"JOIN {LABORATORY} l ON l.dicom_patient_id = s.PatientID ORDER BY 1"
        ).fetchall()
        assert rows == [("1.2.3", "female", 1.0), ("1.2.4", "male", 12.5)]
        assert con.execute(f"SELECT count(*) FROM {CLINICAL}").fetchone() == (4,)
    finally:
        con.close()


def test_failed_duckdb_write_leaves_previous_database(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    write_outputs(nasty_tables, nasty)
    before = nasty.duckdb_path.read_bytes()
    with pytest.raises(duckdb.Error):
        write_duckdb_tables(nasty.duckdb_path, {"broken": nasty.out / "missing.parquet"})
    assert nasty.duckdb_path.read_bytes() == before
    assert [p for p in nasty.out.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unreadable_database_is_named_and_later_writes_still_work(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    """Rebuilds share one DuckDB instance per process: a file it cannot attach, or a
    statement that fails, leaves it ready for the next rebuild."""
    nasty.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    nasty.duckdb_path.write_bytes(b"not a database" * 1000)
    with pytest.raises(OutputWriteError, match="cannot be opened") as info:
        write_outputs(nasty_tables, nasty)
    assert str(nasty.duckdb_path) in str(info.value)
    nasty.duckdb_path.unlink()
    with pytest.raises(duckdb.Error):
        write_duckdb_tables(nasty.duckdb_path, {"broken": nasty.out / "missing.parquet"})
    write_outputs(nasty_tables, nasty)
    con = duckdb.connect(str(nasty.duckdb_path), read_only=True)
    try:
        assert con.execute(f"SELECT count(*) FROM {CLINICAL}").fetchone() == (4,)
        assert con.execute("SELECT count(*) FROM clinical_index").fetchone()[0] > 0  # pyright: ignore[reportOptionalSubscript]
    finally:
        con.close()


def test_concurrent_writes_from_threads_leave_a_readable_database(
    nasty_tables: ClinicalTables, nasty: DataLayout
) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write_outputs(nasty_tables, nasty)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    con = duckdb.connect(str(nasty.duckdb_path), read_only=True)
    try:
        assert con.execute(f"SELECT count(*) FROM {LABORATORY}").fetchone() == (4,)
        assert con.execute(f"SELECT count(*) FROM {CLINICAL_INDEX}").fetchone()[0] > 0  # pyright: ignore[reportOptionalSubscript]
    finally:
        con.close()


def _process_writer(root: str, kind: str) -> None:
    """Run in a spawned process: one clinical write, or another writer's table."""
    layout = DataLayout.at(root)
    if kind == "clinical":
        write_outputs(build_clinical_tables(layout, COLLECTION, target=TARGET), layout)
    else:
        path = layout.out / "scratch" / f"{kind}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"PatientID": [P1], "kind": [kind]}).write_parquet(path)
        write_duckdb_tables(layout.duckdb_path, {kind: path})


def test_concurrent_writes_from_processes_lose_nothing(nasty: DataLayout) -> None:
    context = multiprocessing.get_context("spawn")
    kinds = ["clinical", "sm_index", "clinical", "ann_index"]
    processes = [
        context.Process(target=_process_writer, args=(str(nasty.root), kind)) for kind in kinds
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(kinds)
    con = duckdb.connect(str(nasty.duckdb_path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert {CLINICAL, LABORATORY, "table_metadata", "column_metadata"} <= tables
        assert {"sm_index", "ann_index"} <= tables
        assert con.execute(f"SELECT count(*) FROM {CLINICAL}").fetchone() == (4,)
    finally:
        con.close()


def test_patient_coverage_errs_on_rows_without_dicom_unless_kept_and_lists_what_was_left_out() -> (
    None
):
    from bms_pipeline.core.clinical.qa import patient_coverage

    a, b, c = ("A" * 32, "B" * 32, "C" * 32)
    clinical = pl.DataFrame({"dicom_patient_id": [a, b]})
    laboratory = pl.DataFrame({"dicom_patient_id": [a]})
    tables = {"x_clinical": clinical, "x_laboratory": laboratory}
    strict = patient_coverage(tables, "x_clinical", {a, c}, {"x_clinical": ["D" * 32]}, False)
    assert strict.rows_without_dicom == {"x_clinical": [b], "x_laboratory": []}
    assert strict.dicom_without_clinical == [c]
    assert not strict.passed and strict.is_error
    assert b in strict.describe() and c in strict.describe() and "D" * 32 in strict.describe()
    kept = patient_coverage(tables, "x_clinical", {a, b}, {}, True)
    assert kept.passed and not kept.is_error
    assert f"x_clinical: 1 patient(s) with no DICOM: {b}" not in kept.describe()
    kept_orphan = patient_coverage(tables, "x_clinical", {a}, {}, True)
    assert kept_orphan.passed
    assert f"x_clinical: 1 patient(s) with no DICOM: {b}" in kept_orphan.describe()
