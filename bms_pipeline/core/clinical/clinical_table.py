"""The `<collection_id>_clinical` table from clinical.csv: the contract's columns (their
names are BigQuery-safe already) in source order, each derived column (sex meaning, age in
years, NCIt meaning) right after its source; the source strings are kept. Other columns of
the file are never read into the table (`patients.read_clinical_source`).
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from bms_pipeline.core.clinical.idc_metadata import (
    CASE_COLUMN,
    DICOM_PATIENT_COLUMN,
    PROVENANCE_LABELS,
    SOURCE_BATCH,
    SOURCE_BATCH_COLUMN,
    ColumnInfo,
    SourceFile,
    provenance_columns,
)
from bms_pipeline.core.clinical.patients import (
    CLINICAL_COLUMNS,
    ClinicalSource,
    PatientClinical,
    ncit_leukemia,
    read_clinical_source,
)

# clinical.csv: the derived columns that follow a source column, and every label.
_CLINICAL_DERIVED: dict[str, tuple[str, ...]] = {
    "gender": ("dicom_patient_sex",),
    "age": ("dicom_patient_age", "age_years"),
    "ncit_concept_code": ("ncit_concept_meaning",),
}
_CLINICAL_LABELS: dict[str, str] = {
    **PROVENANCE_LABELS,
    "patient_id": "patient id as given in clinical.csv (the DICOM PatientID)",
    "gender": "gender as given in clinical.csv (female, male or other)",
    "dicom_patient_sex": "DICOM PatientSex derived from gender (F, M or O)",
    "age": "age as given in clinical.csv: whole years or a DICOM Age String",
    "dicom_patient_age": "DICOM PatientAge (Age String, e.g. 012Y) derived from age",
    "age_years": "age in whole years derived from age (months, weeks, days rounded down)",
    "leukemia_type": "leukemia type",
    "leukemia_subtype": "leukemia subtype",
    "ncit_concept_code": "diagnosis as an NCIt concept code",
    "ncit_concept_meaning": "NCIt concept meaning of ncit_concept_code (shipped NCIt table)",
}
_SEX_MEANING = {"F": "female", "M": "male", "O": "other"}
_AGE_UNIT_DAYS = {"D": 1, "W": 7, "M": 365.25 / 12, "Y": 365.25}


def _age_years(age: str) -> int:
    """DICOM Age String -> whole years, rounding down (``006M`` -> 0)."""
    return int(int(age[:3]) * _AGE_UNIT_DAYS[age[3]] // 365.25)


def clinical_table(
    source: SourceFile, clinical: ClinicalSource | None = None
) -> tuple[pl.DataFrame, dict[str, ColumnInfo]]:
    """clinical.csv as the clinical table: the contract's columns only, read and validated
    once by `read_clinical_source` (``clinical``, read here if not given)."""
    path = source.path
    clinical = clinical or read_clinical_source(path)
    patients: dict[str, PatientClinical] = clinical.patients
    ordered = sorted(CLINICAL_COLUMNS, key=lambda c: clinical.positions[c])
    raw = pl.DataFrame(  # an empty field is null, as in the lab table
        {c: [row[c] or None for row in clinical.rows] for c in ordered},
        schema=dict.fromkeys(ordered, pl.String),
    )
    raw = raw.with_columns(pl.col("patient_id").str.strip_chars().alias("dicom_patient_id"))
    derived = pl.DataFrame(
        [
            (p.patient_id, p.sex, p.age, _age_years(p.age), p.ncit_meaning)
            for p in patients.values()
        ],
        schema={
            "dicom_patient_id": pl.String,
            "dicom_patient_sex": pl.String,
            "dicom_patient_age": pl.String,
            "age_years": pl.Int64,
            "ncit_concept_meaning": pl.String,
        },
        orient="row",
    )
    joined = raw.join(derived, on="dicom_patient_id", how="left", maintain_order="left")

    order = [DICOM_PATIENT_COLUMN, SOURCE_BATCH_COLUMN]
    info = provenance_columns(clinical.headers[CASE_COLUMN])
    for name in ordered:
        header, position = clinical.headers[name], clinical.positions[name]
        order.append(name)
        info[name] = ColumnInfo(_CLINICAL_LABELS[name], (header,), (position,), source)
        for extra in _CLINICAL_DERIVED.get(name, ()):
            order.append(extra)
            info[extra] = ColumnInfo(_CLINICAL_LABELS[extra], (header,), (position,), source)
    info["dicom_patient_sex"] = replace(
        info["dicom_patient_sex"],
        value_descriptions=_SEX_MEANING,
        values_note="DICOM PatientSex defined terms",
    )
    info["ncit_concept_code"] = replace(
        info["ncit_concept_code"],
        value_descriptions=ncit_leukemia(),
        values_note="descriptions from the NCIt table shipped with bms_pipeline",
    )
    table = joined.with_columns(pl.lit(SOURCE_BATCH, dtype=pl.Int64).alias("source_batch"))
    return table.select(order), info
