"""Quality rules for the published clinical tables: one row per patient, no free text that
could identify anyone, every patient with DICOM, and column_metadata matching the tables.

Each returns problems as strings that name the table, the column or the patient; the asset
checks only show them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from bms_pipeline.core.bigquery import bigquery_type
from bms_pipeline.core.clinical.idc_metadata import (
    COLUMN_METADATA,
    COLUMN_METADATA_SCHEMA,
    DICOM_PATIENT_COLUMN,
    MAX_VALUES,
    PROVENANCE_LABELS,
    TABLE_METADATA,
    TABLE_METADATA_SCHEMA,
)
from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_name

if TYPE_CHECKING:
    from bms_pipeline.core.clinical.tables import ClinicalTables


def restrict_to_patients(
    df: pl.DataFrame, patients: Collection[str]
) -> tuple[pl.DataFrame, list[str]]:
    """The rows of `patients` only, and the (sorted, distinct) patient ids left out."""
    keep = pl.col("dicom_patient_id").is_in(sorted(set(patients)))
    dropped = sorted(
        set(
            df.filter(~keep | pl.col("dicom_patient_id").is_null())["dicom_patient_id"].drop_nulls()
        )
    )
    return df.filter(keep), dropped


def _patient_ids(df: pl.DataFrame) -> list[str]:
    return df["dicom_patient_id"].drop_nulls().to_list()


def patients_missing_in_dicom(
    clinical_df: pl.DataFrame, dicom_patient_ids: Iterable[str]
) -> list[str]:
    """dicom_patient_id values that are no PatientID of the converted DICOM (sorted)."""
    return sorted(set(_patient_ids(clinical_df)) - set(dicom_patient_ids))


def dicom_patients_without_clinical(
    clinical_df: pl.DataFrame, dicom_patient_ids: Iterable[str]
) -> list[str]:
    """PatientIDs of the converted DICOM without a clinical row (sorted)."""
    return sorted(set(dicom_patient_ids) - set(_patient_ids(clinical_df)))


def duplicate_patients(df: pl.DataFrame) -> list[str]:
    """dicom_patient_id values with more than one row (sorted)."""
    counts = df.group_by("dicom_patient_id").len().filter(pl.col("len") > 1)
    return sorted(counts["dicom_patient_id"].drop_nulls().to_list())


# fmt: off
_PHI_TOKENS = frozenset((
    "name", "names", "firstname", "lastname", "surname", "forename", "vorname", "nachname",
    "initials", "dob", "birth", "birthdate", "birthday", "geburtsdatum", "geboren",
    "address", "adresse", "street", "strasse", "city", "ort", "zip", "postcode", "plz",
    "phone", "telephone", "telefon", "email", "mail", "mrn", "ssn", "insurance",
    "comment", "comments", "kommentar", "note", "notes", "remark", "remarks", "bemerkung",
    "freetext", "text", "anamnese", "info", "infos", "station", "anmerkung", "hinweis",
    "freitext", "bemerkungen", "kommentare",
))
# fmt: on
_DATE_LIKE = r"\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b"
_FREE_TEXT_CHARS = 64
_FREE_TEXT_WORDS = 8


def free_text_findings(df: pl.DataFrame, allowed: Iterable[str] = ()) -> list[str]:
    """Columns that could identify a person, each with the reason and the number of rows,
    never a value: a name-like header (a token such as name, dob, birth, address, comment
    or text), or a string column holding a value longer than 64 characters, of 8 or more
    words, or that looks like a calendar date. Heuristic, meant to fail loud; ``allowed``
    exempts reviewed columns."""
    exempt = set(allowed)
    findings: list[str] = []
    for name, dtype in df.schema.items():
        if name in exempt:
            continue
        tokens = set(re.split(r"[_\W]+", name.lower()))
        if tokens & _PHI_TOKENS or "free_text" in name.lower():
            findings.append(f"column {name}: its name suggests personal data or free text")
            continue
        if dtype != pl.String:
            continue
        text = df[name]
        reasons = {
            f"longer than {_FREE_TEXT_CHARS} characters": text.str.len_chars() > _FREE_TEXT_CHARS,
            f"{_FREE_TEXT_WORDS} or more words": text.str.count_matches(r"\S+") >= _FREE_TEXT_WORDS,
            "a date": text.str.contains(_DATE_LIKE),
        }
        found = [
            f"{int(hit.fill_null(False).sum())} value(s) {reason}"
            for reason, hit in reasons.items()
            if hit.fill_null(False).any()
        ]
        if found:
            findings.append(f"column {name}: " + ", ".join(found) + " (not shown)")
    return findings


def free_text_phi_columns(df: pl.DataFrame, allowed: Iterable[str] = ()) -> list[str]:
    """The names of the columns `free_text_findings` reports."""
    return [f.split(":", 1)[0].removeprefix("column ") for f in free_text_findings(df, allowed)]


def left_out_summary(left_out: Mapping[str, list[str]], shown: int = 20) -> list[str]:
    """One line per table naming the patients without a converted slide whose rows were
    left out (pseudonymous ids, which may be shown), for logs and the run's summary."""
    return [
        f"{table}: {len(ids)} patient(s) without a converted slide left out: "
        + ", ".join(ids[:shown])
        + (f" ... and {len(ids) - shown} more" if len(ids) > shown else "")
        for table, ids in left_out.items()
        if ids
    ]


def column_metadata_matches_schema(tables: ClinicalTables) -> list[str]:
    """Every way column_metadata and table_metadata disagree with the tables; empty if none."""
    problems: list[str] = []
    for name, frame, schema in (
        (COLUMN_METADATA, tables.column_metadata, COLUMN_METADATA_SCHEMA),
        (TABLE_METADATA, tables.table_metadata, TABLE_METADATA_SCHEMA),
    ):
        if frame.schema != schema:
            problems.append(f"{name}: schema {dict(frame.schema)} is not IDC's {dict(schema)}")
    meta = tables.column_metadata
    short = meta["table_name"].str.split(".").list.last()
    described = set(short.to_list())
    expected = set(tables.data_tables)
    if described != expected:
        problems.append(
            f"column_metadata describes tables {sorted(described)}, not {sorted(expected)}"
        )
    listed = set(tables.table_metadata["table_name"].str.split(".").list.last().to_list())
    if listed != expected:
        problems.append(f"table_metadata lists tables {sorted(listed)}, not {sorted(expected)}")
    for table, frame in tables.data_tables.items():
        rows = meta.filter(short == table)
        if frame.columns[:2] != ["dicom_patient_id", "source_batch"]:
            problems.append(f"{table}: does not start with dicom_patient_id, source_batch")
        if rows["column"].to_list() != frame.columns:
            problems.append(
                f"{table}: column_metadata columns {rows['column'].to_list()} != table "
                f"columns {frame.columns}"
            )
            continue
        problems += _provenance_problems(table, frame, rows)
        for row in rows.iter_rows(named=True):
            column = row["column"]
            dtype = frame.schema[column]
            if row["data_type"] != bigquery_type(dtype):
                problems.append(
                    f"{table}.{column}: data_type {row['data_type']} but the column is "
                    f"{bigquery_type(dtype)}"
                )
            try:
                safe = bigquery_name(column) == column
            except ColumnNameError:
                safe = False
            if not safe:
                problems.append(f"{table}.{column}: not a BigQuery-safe name")
            distinct = frame[column].drop_nulls().n_unique()
            codes = [v["option_code"] for v in row["values"]]
            if distinct > MAX_VALUES and codes:
                problems.append(f"{table}.{column}: values listed for {distinct} distinct values")
            if 0 < distinct <= MAX_VALUES:
                actual = sorted(frame[column].drop_nulls().unique().cast(pl.String).to_list())
                if sorted(codes) != actual:
                    problems.append(f"{table}.{column}: values {codes} != distinct {actual}")
    if tables.clinical.schema["source_batch"] != pl.Int64:
        problems.append("source_batch is not INTEGER")
    return problems


def _provenance_problems(table: str, frame: pl.DataFrame, rows: pl.DataFrame) -> list[str]:
    """IDC's provenance labels, and one case_col: a source column dicom_patient_id is made from."""
    problems: list[str] = []
    labels = dict(zip(rows["column"], rows["column_label"], strict=True))
    for column, label in PROVENANCE_LABELS.items():
        if labels.get(column) != label:
            problems.append(
                f"{table}.{column}: column_label {labels.get(column)!r}, not IDC's {label!r}"
            )
    cases = rows.filter(pl.col("case_col"))["column"].to_list()
    if len(cases) != 1 or cases[0] in PROVENANCE_LABELS:
        return [*problems, f"{table}: case_col marks {cases}, not the one source patient column"]
    (case,) = cases
    stripped = frame[case].cast(pl.String).str.strip_chars()
    if not (stripped == frame[DICOM_PATIENT_COLUMN]).fill_null(False).all():
        problems.append(f"{table}: dicom_patient_id is not case_col {case!r} stripped on every row")
    return problems


@dataclass(frozen=True)
class PatientCoverage:
    """How the published tables' patients meet the DICOM's (`patient_coverage`)."""

    rows_without_dicom: dict[str, list[str]]
    """Per table, patients with rows but no DICOM: an error unless kept on purpose."""
    dicom_without_clinical: list[str]
    """DICOM patients without a clinical row: reported, never silently dropped."""
    left_out: dict[str, list[str]]
    """Per table, patients without a converted slide whose rows were left out at build."""
    errors: list[str]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def is_error(self) -> bool:
        """An error (not a warning): a row whose patient has no DICOM."""
        return bool(self.errors) and any(self.rows_without_dicom.values())

    def describe(self) -> str:
        return "; ".join(self.errors + self.notes) or "every patient of every table has DICOM"


def patient_coverage(
    tables: Mapping[str, pl.DataFrame],
    clinical_table: str,
    dicom_patients: set[str],
    left_out: Mapping[str, list[str]],
    keep_patients_without_dicom: bool,
) -> PatientCoverage:
    """Every dicom_patient_id of every table is a converted PatientID (unless rows without
    DICOM are kept on purpose, when they are reported), and every converted patient has a
    clinical row; what was left out at build is listed by patient id."""
    orphans = {name: patients_missing_in_dicom(df, dicom_patients) for name, df in tables.items()}
    without = dicom_patients_without_clinical(tables[clinical_table], dicom_patients)
    rows = [
        f"{table}: {len(ids)} patient(s) with no DICOM: {', '.join(ids[:10])}"
        for table, ids in orphans.items()
        if ids
    ]
    errors = [] if keep_patients_without_dicom else list(rows)
    if without:
        errors.append(
            f"{len(without)} DICOM patient(s) with no clinical row: {', '.join(without[:10])}"
        )
    notes = [
        f"{table}: {len(ids)} patient(s) without a converted slide left out: {', '.join(ids[:10])}"
        + (" ..." if len(ids) > 10 else "")
        for table, ids in left_out.items()
        if ids
    ]
    if not errors:
        notes += rows
    return PatientCoverage(orphans, without, dict(left_out), errors, notes)
