"""clinical.csv as the per-patient facts the DICOM headers need (sex, age, diagnosis)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bms_pipeline.core.reference import reference_path

CLINICAL_COLUMNS = (
    "patient_id",
    "gender",
    "age",
    "leukemia_type",
    "leukemia_subtype",
    "ncit_concept_code",
)
_SEX = {"female": "F", "male": "M", "other": "O"}
_AGE_STRING = re.compile(r"^\d{3}[DWMY]$")


class ClinicalDataError(ValueError):
    """A clinical row that cannot be used; the message names the file, row and patient."""


@cache
def ncit_leukemia() -> dict[str, str]:
    """The shipped NCIt table: code -> meaning."""
    with open(reference_path("ncit_leukemia.csv"), encoding="utf-8", newline="") as handle:
        return {row["code"]: row["meaning"] for row in csv.DictReader(handle)}


@dataclass(frozen=True)
class PatientClinical:
    patient_id: str
    sex: str  # DICOM PatientSex: F, M or O
    age: str  # DICOM Age String, e.g. 007Y
    leukemia_type: str | None
    leukemia_subtype: str | None
    ncit_code: str | None
    ncit_meaning: str | None

    @property
    def has_diagnosis(self) -> bool:
        return self.ncit_code is not None


def age_string(value: str) -> str:
    """`7`, `7.0` or `007Y` -> `007Y`; anything else raises ValueError."""
    value = value.strip()
    if _AGE_STRING.match(value):
        return value
    try:
        years = float(value.replace(",", "."))
    except ValueError:
        raise ValueError(f"age {value!r} is neither years nor a DICOM Age String") from None
    if not years.is_integer() or not 0 <= years <= 999:
        raise ValueError(f"age {value!r} is not a whole number of years between 0 and 999")
    return f"{int(years):03d}Y"


def read_clinical_csv(path: Path) -> dict[str, PatientClinical]:
    """Read the semicolon-delimited clinical.csv (UTF-8, optional BOM)."""
    if not path.is_file():
        raise ClinicalDataError(f"{path}: clinical.csv does not exist")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        missing = [c for c in CLINICAL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ClinicalDataError(
                f"{path}: missing columns {missing} (header {reader.fieldnames})"
            )
        patients: dict[str, PatientClinical] = {}
        for line, row in enumerate(reader, start=2):
            patient_id = (row["patient_id"] or "").strip()
            where = f"{path}, line {line}, patient {patient_id or '<blank>'}"
            if not patient_id:
                raise ClinicalDataError(f"{where}: patient_id is blank")
            if patient_id in patients:
                raise ClinicalDataError(f"{where}: duplicate row for this patient")
            gender = (row["gender"] or "").strip().lower()
            if gender not in _SEX:
                raise ClinicalDataError(
                    f"{where}: gender {row['gender']!r} is not female, male or other"
                )
            try:
                age = age_string(row["age"] or "")
            except ValueError as exc:
                raise ClinicalDataError(f"{where}: {exc}") from None
            code = (row["ncit_concept_code"] or "").strip() or None
            meaning = None
            if code is not None:
                meaning = ncit_leukemia().get(code)
                if meaning is None:
                    raise ClinicalDataError(
                        f"{where}: NCIt code {code!r} is not in the shipped NCIt table"
                    )
            patients[patient_id] = PatientClinical(
                patient_id=patient_id,
                sex=_SEX[gender],
                age=age,
                leukemia_type=(row["leukemia_type"] or "").strip() or None,
                leukemia_subtype=(row["leukemia_subtype"] or "").strip() or None,
                ncit_code=code,
                ncit_meaning=meaning,
            )
    return patients


def clinical_for(path: Path, patient_id: str) -> PatientClinical:
    patients = read_clinical_csv(path)
    if patient_id not in patients:
        raise ClinicalDataError(f"{path}: no clinical row for patient {patient_id}")
    return patients[patient_id]
