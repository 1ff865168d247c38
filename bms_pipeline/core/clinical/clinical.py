"""The `<collection_id>_clinical` table from clinical.csv: the source columns under
BigQuery-safe names, each derived column (sex meaning, age in years, NCIt meaning) right
after its source; the source strings are kept.
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
from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_names
from bms_pipeline.core.clinical.patients import (
    ClinicalDataError,
    PatientClinical,
    ncit_leukemia,
    read_clinical_csv,
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


def clinical_table(source: SourceFile) -> tuple[pl.DataFrame, dict[str, ColumnInfo]]:
    """clinical.csv as the clinical table, validated by `read_clinical_csv`'s rules."""
    path = source.path
    patients: dict[str, PatientClinical] = read_clinical_csv(path)
    raw = pl.read_csv(path, separator=";", infer_schema=False, encoding="utf8")
    headers = list(raw.columns)
    try:
        names = bigquery_names(headers)
    except ColumnNameError as exc:
        raise ClinicalDataError(f"{path}: {exc}") from exc
    added = {
        "dicom_patient_id",
        "source_batch",
        *(x for d in _CLINICAL_DERIVED.values() for x in d),
    }
    if added & set(names):
        raise ClinicalDataError(
            f"{path}: source columns {sorted(added & set(names))} clash with columns this "
            "table adds"
        )
    raw = raw.rename(dict(zip(headers, names, strict=True)))
    position = {name: i for i, name in enumerate(names)}
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
    if joined.height != len(patients) or joined["dicom_patient_sex"].null_count():
        raise ClinicalDataError(f"{path}: rows read by polars and by the validator disagree")

    order = [DICOM_PATIENT_COLUMN, SOURCE_BATCH_COLUMN]
    info = provenance_columns(headers[position[CASE_COLUMN]])
    for name, header in zip(names, headers, strict=True):
        order.append(name)
        info[name] = ColumnInfo(
            _CLINICAL_LABELS.get(name, header), (header,), (position[name],), source
        )
        for extra in _CLINICAL_DERIVED.get(name, ()):
            order.append(extra)
            info[extra] = ColumnInfo(_CLINICAL_LABELS[extra], (header,), (position[name],), source)
    info["dicom_patient_sex"] = replace(
        info["dicom_patient_sex"],
        value_descriptions=_SEX_MEANING,
        values_note="DICOM PatientSex defined terms",
    )
    if "ncit_concept_code" in info:
        info["ncit_concept_code"] = replace(
            info["ncit_concept_code"],
            value_descriptions=ncit_leukemia(),
            values_note="descriptions from the NCIt table shipped with bms_pipeline",
        )
    table = joined.with_columns(pl.lit(SOURCE_BATCH, dtype=pl.Int64).alias("source_batch"))
    return table.select(order), info
