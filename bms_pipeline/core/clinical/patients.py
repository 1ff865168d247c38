"""clinical.csv as the per-patient facts the DICOM headers need (sex, age, diagnosis).

One reader for everything that reads the file (the DICOM metadata and the clinical table),
so both see the same rows. What it accepts:

- UTF-8 (with or without a BOM) or UTF-16 with a BOM; any other encoding (Latin-1,
  Windows-1252 from an old Excel) is an error naming the line and the byte, not a guess;
- semicolon-delimited, header first; blank lines (also ``;;;;;``) are skipped;
- exactly the contract's columns are read (``CLINICAL_COLUMNS``, DESIGN.md section 2), in any
  order; any other column is left out of everything and named by its position only
  (`LeftOutField`): a header or a free-text column can name a person.

Errors name the file, the line and the reason. They show a cell's content only when it has
the shape of a code or a number (`shown_value`): a misplaced cell can hold a name.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
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
PSEUDONYM_PATTERN = r"^[0-9A-F]{32}$"
_PSEUDONYM = re.compile(PSEUDONYM_PATTERN)
_SHOWABLE = re.compile(r"^[A-Za-z]{0,2}[0-9][0-9.,:<>+-]{0,11}[A-Za-z]{0,2}$")


class ClinicalDataError(ValueError):
    """A clinical row that cannot be used; the message names the file, row and patient."""


def is_pseudonym(patient_id: str | None) -> bool:
    """A BMDeep patient id: 32 upper-case hex characters (the de-identified pseudonym)."""
    return patient_id is not None and bool(_PSEUDONYM.match(patient_id))


def shown_value(value: str | None) -> str:
    """A cell's content for a message if it has the shape of a code or a number (``C9999``,
    ``12,5``, ``007Y``), else only its length: anything else may be free text with a name."""
    if value is None or not value.strip():
        return "an empty value"
    if _SHOWABLE.match(value.strip()):
        return repr(value.strip())
    return f"a value of {len(value)} character(s), not shown"


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


@dataclass(frozen=True)
class LeftOutField:
    """A clinical.csv column that is not the contract's, named by its position only."""

    position: int  # 0-based
    cells: int  # non-empty cells below the header

    def describe(self) -> str:
        return (
            f"column {self.position + 1} is not one of clinical.csv's columns "
            f"({', '.join(CLINICAL_COLUMNS)}); left out of the tables ({self.cells} non-empty "
            "cell(s), not shown)"
        )


@dataclass(frozen=True)
class ClinicalSource:
    """clinical.csv read once: the contract columns' source strings per patient row, where
    each column is, and what was left out."""

    path: Path
    headers: dict[str, str]  # contract column -> its header as written
    positions: dict[str, int]  # contract column -> 0-based position in the file
    rows: list[dict[str, str]]  # per patient row, contract column -> source string
    patients: dict[str, PatientClinical]
    left_out: tuple[LeftOutField, ...] = field(default=())

    @property
    def warnings(self) -> list[str]:
        return [f"{self.path}: {f.describe()}" for f in self.left_out]


def age_string(value: str) -> str:
    """`7`, `7.0` or `007Y` -> `007Y`; anything else raises ValueError."""
    value = value.strip()
    if _AGE_STRING.match(value):
        return value
    try:
        years = float(value.replace(",", "."))
    except ValueError:
        raise ValueError(
            f"age ({shown_value(value)}) is neither years nor a DICOM Age String"
        ) from None
    if not years.is_integer() or not 0 <= years <= 999:
        raise ValueError(
            f"age ({shown_value(value)}) is not a whole number of years between 0 and 999"
        )
    return f"{int(years):03d}Y"


def decode_clinical_csv(path: Path, data: bytes) -> str:
    """The file's text: UTF-8 (BOM optional) or UTF-16 with a BOM; anything else is an
    error naming the line and the offending byte (never the text around it)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ClinicalDataError(
                f"{path}: starts with a UTF-16 byte-order mark but is not valid UTF-16 "
                f"(at byte {exc.start}); save it as UTF-8"
            ) from None
    if b"\x00" in data[:4096]:
        raise ClinicalDataError(
            f"{path}: holds NUL bytes: UTF-16 without a byte-order mark, or not a text file; "
            "save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ClinicalDataError(
            f"{path}: line {line}, byte {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            "the file is in another encoding (Latin-1 or Windows-1252, as older Excel "
            "versions save CSV?): save it as UTF-8 (or UTF-16 with a byte-order mark)"
        ) from None


def read_clinical_source(path: Path) -> ClinicalSource:
    """Read and validate clinical.csv (the rules in the module docstring)."""
    if not path.is_file():
        raise ClinicalDataError(f"{path}: clinical.csv does not exist")
    text = decode_clinical_csv(path, path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";")
    header: list[str] | None = None
    for fields in reader:
        if any(f.strip() for f in fields):
            header = [f.strip() for f in fields]
            break
    if header is None:
        raise ClinicalDataError(f"{path}: no header line (the file is empty)")
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        if name in CLINICAL_COLUMNS:
            if name in positions:
                raise ClinicalDataError(
                    f"{path}: column {name!r} twice (columns {positions[name] + 1} and "
                    f"{position + 1})"
                )
            positions[name] = position
    missing = [c for c in CLINICAL_COLUMNS if c not in positions]
    if missing:
        raise ClinicalDataError(
            f"{path}: missing column(s) {missing} in the header line (line {reader.line_num})"
        )
    extra = [p for p in range(len(header)) if p not in positions.values()]
    extra_cells = dict.fromkeys(extra, 0)
    rows: list[dict[str, str]] = []
    patients: dict[str, PatientClinical] = {}
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # a blank line, or one of separators only
        if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
            raise ClinicalDataError(
                f"{path}, line {line}: {len(fields)} fields, the header has {len(header)} "
                "(an unquoted ';' in a value?)"
            )
        fields = fields + [""] * (len(header) - len(fields))
        for p in extra:
            extra_cells[p] += bool(fields[p].strip())
        row = {c: fields[positions[c]] for c in CLINICAL_COLUMNS}
        patient = _patient(path, line, row, patients)
        patients[patient.patient_id] = patient
        rows.append(row)
    left_out = tuple(LeftOutField(p, extra_cells[p]) for p in extra)
    headers = {c: header[p] for c, p in positions.items()}
    return ClinicalSource(path, headers, positions, rows, patients, left_out)


def _patient(
    path: Path, line: int, row: dict[str, str], seen: dict[str, PatientClinical]
) -> PatientClinical:
    patient_id = row["patient_id"].strip()
    if not patient_id:
        raise ClinicalDataError(f"{path}, line {line}: patient_id is blank")
    if not is_pseudonym(patient_id):
        raise ClinicalDataError(
            f"{path}, line {line}: patient_id is not a pseudonym (32 upper-case hex "
            f"characters; {shown_value(patient_id)})"
        )
    where = f"{path}, line {line}, patient {patient_id}"
    if patient_id in seen:
        raise ClinicalDataError(f"{where}: duplicate row for this patient")
    gender = row["gender"].strip().lower()
    if gender not in _SEX:
        raise ClinicalDataError(
            f"{where}: gender ({shown_value(row['gender'])}) is not female, male or other"
        )
    try:
        age = age_string(row["age"])
    except ValueError as exc:
        raise ClinicalDataError(f"{where}: {exc}") from None
    code = row["ncit_concept_code"].strip() or None
    meaning = None
    if code is not None:
        meaning = ncit_leukemia().get(code)
        if meaning is None:
            raise ClinicalDataError(
                f"{where}: NCIt code ({shown_value(code)}) is not in the shipped NCIt table"
            )
    return PatientClinical(
        patient_id=patient_id,
        sex=_SEX[gender],
        age=age,
        leukemia_type=row["leukemia_type"].strip() or None,
        leukemia_subtype=row["leukemia_subtype"].strip() or None,
        ncit_code=code,
        ncit_meaning=meaning,
    )


def read_clinical_csv(path: Path) -> dict[str, PatientClinical]:
    """clinical.csv's patients by id (`read_clinical_source`'s rules)."""
    return read_clinical_source(path).patients


def clinical_for(path: Path, patient_id: str) -> PatientClinical:
    patients = read_clinical_csv(path)
    if patient_id not in patients:
        raise ClinicalDataError(f"{path}: no clinical row for patient {patient_id}")
    return patients[patient_id]
