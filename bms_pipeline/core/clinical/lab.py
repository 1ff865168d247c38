"""lab_values.xlsx: censored, German-formatted lab cells read without losing anything.

Every cell is read as a string (calamine through polars, ``infer_schema_length=0``), so no
coercion happens before the rules below see it. Each lab column then becomes three:

- ``<col>``: the source string, exactly as the workbook holds it (``>1800``, ``<0,2``,
  ``<Nachweisgrenze``, `` 12,5 ``);
- ``<col>_value``: FLOAT, the number in the cell (German decimal comma parsed);
- ``<col>_qualifier``: ``<`` or ``>`` for a censored cell, else null.

What a cell may hold (surrounding whitespace ignored):

======================  ==============================  =====================================
cell                    ``_value``                      ``_qualifier``
======================  ==============================  =====================================
blank                   null                            null
``12,5`` / ``12.5``     12.5 (a lone ``.`` is a decimal point: that is how calamine renders a
                        numeric Excel cell; ``1.234,5`` with dot groups and a comma is 1234.5)
``<0,2`` / ``> 1800``   0.2 / 1800.0                    ``<`` / ``>``
``<Nachweisgrenze``     null                            ``<`` (below the detection limit; each
                                                        such cell is reported as a note)
anything else           null                            null, and the cell is reported with
                                                        sheet, Excel row and column (or, with
                                                        ``strict=True``, a ClinicalDataError)
======================  ==============================  =====================================

Hemoglobin arrives in mixed units. Rule (applied to ``hemoglobin_value`` only; the source
string is untouched): an *integer-looking* value (``102``, ``102,0``) above 25 is in g/L and
is divided by 10 to g/dL, because blood hemoglobin above 25 g/dL does not occur while g/L
values are whole numbers in the 30-200 range. A value at or below 25 is already g/dL. A
non-integer value above 25 fits neither unit cleanly; it is left as is and reported. The rule
and the Excel rows it changed are returned as a `Normalisation`, which the table builder
records in column_metadata.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import fastexcel
import polars as pl

from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_names
from bms_pipeline.core.clinical.patients import ClinicalDataError
from bms_pipeline.core.reference import reference_path

LAB_SHEET = "lab_values"
DICTIONARY_SHEET = "idc_dictionary"
PATIENT_COLUMN = "patient_id"
DICTIONARY_COLUMNS = ("column_formula", "column_label_formula")
HEMOGLOBIN_LOINC = "718-7"
HEMOGLOBIN_UNIT = "g/dL"
HEMOGLOBIN_G_PER_L_ABOVE = 25.0
HEMOGLOBIN_RULE = (
    "hemoglobin normalised to g/dL: an integer-looking source value above 25 is g/L and is "
    "divided by 10 (hemoglobin above 25 g/dL does not occur); values at or below 25 are "
    "already g/dL; the source string column is unchanged"
)
FIRST_DATA_ROW = 2  # Excel row of the first data row: row 1 holds the headers

CellKind = Literal["blank", "number", "censored", "below_detection_limit", "invalid"]

# A number as the German lab system writes it, or as calamine renders a numeric cell.
_NUM_DOT = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_COMMA = r"[+-]?(?:\d+,\d+|,\d+)"
_NUM_GROUPED = r"[+-]?\d{1,3}(?:\.\d{3})+(?:,\d+)?"
_INTEGER_LOOKING = r"^[+-]?\d+(?:[.,]0+)?$"
_BELOW_DETECTION = r"(?i)^(?:<\s*|unter\s+(?:der\s+)?)(?:nachweisgrenze|nwg)$"
_LOINC_IN_LABEL = re.compile(r"LOINC:\s*([0-9]+-[0-9])")


@dataclass(frozen=True)
class CellIssue:
    """One lab cell that needs a human's attention, located as a spreadsheet user would."""

    file: str
    sheet: str
    row: int  # 1-based Excel row
    column: str  # the source header
    value: str
    kind: CellKind  # "invalid" (a warning) or "below_detection_limit" (a note)
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: sheet {self.sheet!r}, row {self.row}, column {self.column!r}: "
            f"{self.message} (cell {self.value!r})"
        )


@dataclass(frozen=True)
class Normalisation:
    """A change applied to a typed companion column, kept so column_metadata can state it."""

    column: str  # the companion it changed, e.g. "hemoglobin_value"
    source_column: str  # the source header, e.g. "hemoglobin"
    rule: str
    sheet: str
    rows: tuple[int, ...]  # 1-based Excel rows whose value was changed

    def describe(self) -> str:
        where = (
            f"sheet {self.sheet!r} Excel rows {format_rows(self.rows)}" if self.rows else "no rows"
        )
        return f"{self.rule}; {len(self.rows)} value(s) changed ({where})"


@dataclass(frozen=True)
class LabColumn:
    """One source lab column and where it came from."""

    header: str  # exactly as in the sheet
    name: str  # BigQuery-safe
    position: int  # 0-based column number in the sheet, as IDC's column_numbers
    label: str  # column_label: from idc_dictionary, else the shipped LOINC table, else header
    label_source: str
    loinc: str | None

    @property
    def is_hemoglobin(self) -> bool:
        return self.loinc == HEMOGLOBIN_LOINC or self.name == "hemoglobin"


@dataclass(frozen=True)
class LabSheet:
    """The parsed lab_values sheet: one row per non-empty sheet row, in sheet order.

    ``table`` holds ``dicom_patient_id``, ``excel_row`` and, per lab column, the string, its
    ``_value`` and ``_qualifier`` side by side.
    """

    path: Path
    patient_header: str
    patient_position: int
    columns: tuple[LabColumn, ...]
    table: pl.DataFrame
    issues: tuple[CellIssue, ...]
    normalisations: tuple[Normalisation, ...]
    warnings: tuple[str, ...] = field(default=())


def format_rows(rows: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``: short enough for metadata even with many rows."""
    parts: list[str] = []
    start = prev = None
    for row in sorted(rows):
        if prev is not None and row == prev + 1:
            prev = row
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = row
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


@cache
def loinc_lab_columns() -> dict[str, dict[str, str]]:
    """The shipped reference: column -> {loinc, component, display_name}."""
    with reference_path("loinc_lab_columns.csv").open(encoding="utf-8", newline="") as fh:
        return {row["column"]: row for row in csv.DictReader(fh)}


def reference_label(column: str) -> str | None:
    """The idc_dictionary-style label the shipped LOINC table gives a column, if it lists it."""
    row = loinc_lab_columns().get(column)
    if row is None:
        return None
    return f"LOINC:{row['loinc']} COMPONENT: {row['component']} DISPLAY_NAME: {row['display_name']}"


# --------------------------------------------------------------------------- cell parsing


def parse_lab_columns(frame: pl.DataFrame, sources: Mapping[str, str]) -> pl.DataFrame:
    """Add ``<name>_value``, ``<name>_qualifier``, ``__<name>_kind`` and ``__<name>_int``
    (integer-looking) for each ``name -> source column`` in ``sources``.

    The one implementation of the cell rules in the module docstring. Intermediate results
    are materialised stage by stage so each regex runs once per cell (100,000-row sheets).
    """
    stages: list[list[pl.Expr]] = [[], [], [], []]
    temporary: list[str] = []
    for name, source in sources.items():
        t = f"__{name}"
        temporary += [f"{t}_s", f"{t}_body", f"{t}_sign", f"{t}_ndl", f"{t}_num"]
        stages[0].append(pl.col(source).str.strip_chars().alias(f"{t}_s"))
        s = pl.col(f"{t}_s")
        stages[1] += [
            s.str.extract(r"^([<>])", 1).alias(f"{t}_sign"),
            s.str.replace(r"^[<>]\s*", "").alias(f"{t}_body"),
            s.str.contains(_BELOW_DETECTION).fill_null(False).alias(f"{t}_ndl"),
        ]
        body = pl.col(f"{t}_body")
        stages[2] += [
            pl.when(body.str.contains(f"^{_NUM_DOT}$"))
            .then(body)
            .when(body.str.contains(f"^{_NUM_COMMA}$"))
            .then(body.str.replace(",", ".", literal=True))
            .when(body.str.contains(f"^{_NUM_GROUPED}$"))
            .then(body.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
            .otherwise(None)
            .cast(pl.Float64, strict=False)
            .alias(f"{t}_num"),
            body.str.contains(_INTEGER_LOOKING).fill_null(False).alias(f"{t}_int"),
        ]
        blank = s.is_null() | (s == "")
        below_limit, sign, number = pl.col(f"{t}_ndl"), pl.col(f"{t}_sign"), pl.col(f"{t}_num")
        stages[3] += [
            pl.when(below_limit).then(None).otherwise(number).alias(f"{name}_value"),
            pl.when(below_limit)
            .then(pl.lit("<"))
            .when(number.is_not_null())
            .then(sign)
            .otherwise(None)
            .alias(f"{name}_qualifier"),
            pl.when(blank)
            .then(pl.lit("blank"))
            .when(below_limit)
            .then(pl.lit("below_detection_limit"))
            .when(number.is_not_null() & sign.is_not_null())
            .then(pl.lit("censored"))
            .when(number.is_not_null())
            .then(pl.lit("number"))
            .otherwise(pl.lit("invalid"))
            .alias(f"{t}_kind"),
        ]
    lazy = frame.lazy()
    for stage in stages:
        lazy = lazy.with_columns(stage)
    return lazy.drop(temporary).collect()


def parse_lab_strings(values: pl.Series) -> pl.DataFrame:
    """Parse lab cell strings into ``value`` (Float64), ``qualifier`` and ``kind``."""
    parsed = parse_lab_columns(pl.DataFrame({"s": values.cast(pl.String)}), {"x": "s"})
    return parsed.select(
        pl.col("x_value").alias("value"),
        pl.col("x_qualifier").alias("qualifier"),
        pl.col("__x_kind").alias("kind"),
    )


def parse_lab_value(text: str | None) -> tuple[float | None, str | None, CellKind]:
    """One cell: ``"<0,2"`` -> ``(0.2, "<", "censored")``."""
    row = parse_lab_strings(pl.Series([text], dtype=pl.String)).row(0)
    return row[0], row[1], row[2]


# --------------------------------------------------------------------------- sheet reading


def read_sheets_strings(path: Path, sheets: Sequence[str]) -> dict[str, pl.DataFrame]:
    """Sheets with every cell as a string, read in one pass over the workbook.

    Blank rows and columns are kept, so that row and column numbers stay those a
    spreadsheet user sees.
    """
    try:
        frames = pl.read_excel(
            path,
            sheet_name=list(sheets),
            engine="calamine",
            infer_schema_length=0,
            drop_empty_rows=False,
            drop_empty_cols=False,
        )
    except Exception as exc:  # fastexcel raises its own types for missing sheets/bad files
        raise ClinicalDataError(f"{path}: cannot read sheets {list(sheets)} ({exc})") from exc
    return {name: frame.select(pl.all().cast(pl.String)) for name, frame in frames.items()}


def _sheet_names(path: Path) -> list[str]:
    try:
        return list(fastexcel.read_excel(path).sheet_names)
    except Exception as exc:
        raise ClinicalDataError(f"{path}: not a readable XLSX workbook ({exc})") from exc


def read_lab_dictionary(path: Path, frame: pl.DataFrame | None) -> tuple[dict[str, str], list[str]]:
    """Sheet idc_dictionary (``frame``) as {BigQuery-safe column: label}, plus warnings.

    A missing sheet (None) is a warning, not an error: the shipped LOINC table still labels
    the standard columns, and the caller says which labels came from where.
    """
    warnings: list[str] = []
    if frame is None:
        warnings.append(
            f"{path}: no sheet {DICTIONARY_SHEET!r}; labels come from the shipped table"
        )
        return {}, warnings
    missing = [c for c in DICTIONARY_COLUMNS if c not in frame.columns]
    if missing:
        raise ClinicalDataError(
            f"{path}: sheet {DICTIONARY_SHEET!r} lacks columns {missing} (header {frame.columns})"
        )
    labels: dict[str, str] = {}
    for row, (column, label) in enumerate(
        frame.select(DICTIONARY_COLUMNS).iter_rows(), start=FIRST_DATA_ROW
    ):
        if column is None or not column.strip():
            if label is not None and label.strip():
                warnings.append(
                    f"{path}: sheet {DICTIONARY_SHEET!r}, row {row}: label {label!r} has no column"
                )
            continue
        try:
            name = bigquery_names([column])[0]
        except ColumnNameError as exc:
            raise ClinicalDataError(
                f"{path}: sheet {DICTIONARY_SHEET!r}, row {row}: {exc}"
            ) from exc
        if label is None or not label.strip():
            warnings.append(
                f"{path}: sheet {DICTIONARY_SHEET!r}, row {row}: column {column!r} has no label"
            )
            continue
        labels[name] = label.strip()
    return labels, warnings


def _lab_columns(
    path: Path, headers: list[str], names: list[str], dictionary: dict[str, str]
) -> tuple[list[LabColumn], list[str]]:
    warnings: list[str] = []
    columns: list[LabColumn] = []
    for position, (header, name) in enumerate(zip(headers, names, strict=True)):
        if name == PATIENT_COLUMN:
            continue
        shipped = reference_label(name)
        if name in dictionary:
            label, source = dictionary[name], f"sheet {DICTIONARY_SHEET}"
        elif shipped is not None:
            label, source = shipped, "shipped loinc_lab_columns.csv"
            warnings.append(
                f"{path}: column {header!r} is not in sheet {DICTIONARY_SHEET!r}; "
                "labelled from the shipped LOINC table"
            )
        else:
            label, source = header, "source header"
            warnings.append(
                f"{path}: column {header!r} is in neither sheet {DICTIONARY_SHEET!r} nor the "
                "shipped LOINC table; its label is its header"
            )
        found = _LOINC_IN_LABEL.search(label)
        loinc = found.group(1) if found else None
        expected = loinc_lab_columns().get(name, {}).get("loinc")
        if expected and loinc and loinc != expected:
            warnings.append(
                f"{path}: column {header!r} is labelled LOINC {loinc}, the shipped table says "
                f"{expected}"
            )
        columns.append(LabColumn(header, name, position, label, source, loinc or expected))
    return columns, warnings


def read_lab_values(path: Path, *, strict: bool = False) -> LabSheet:
    """Read and parse lab_values.xlsx (sheet lab_values, labels from idc_dictionary).

    Cells that cannot be understood are reported as `CellIssue` warnings (value null, source
    string kept); with ``strict=True`` they raise one ClinicalDataError listing them all.
    A data row without a patient id is always an error: its values could not be attached to
    anybody. Rows that are entirely blank are skipped.
    """
    if not path.is_file():
        raise ClinicalDataError(f"{path}: lab_values.xlsx does not exist")
    sheets = _sheet_names(path)
    if LAB_SHEET not in sheets:
        raise ClinicalDataError(f"{path}: no sheet {LAB_SHEET!r} (sheets {sheets})")
    frames = read_sheets_strings(path, [n for n in (LAB_SHEET, DICTIONARY_SHEET) if n in sheets])
    raw = frames[LAB_SHEET]
    headers = list(raw.columns)
    try:
        names = bigquery_names(headers)
    except ColumnNameError as exc:
        raise ClinicalDataError(f"{path}: sheet {LAB_SHEET!r}: {exc}") from exc
    if PATIENT_COLUMN not in names:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r} has no {PATIENT_COLUMN!r} column (header {headers})"
        )
    patient_position = names.index(PATIENT_COLUMN)
    patient_header = headers[patient_position]
    companions = {f"{n}_{k}" for n in names if n != PATIENT_COLUMN for k in ("value", "qualifier")}
    clash = sorted(companions & {*names, "dicom_patient_id", "source_batch"})
    if clash:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r}: source columns {clash} clash with the typed "
            "companions or key columns this table adds"
        )
    dictionary, warnings = read_lab_dictionary(path, frames.get(DICTIONARY_SHEET))
    columns, column_warnings = _lab_columns(path, headers, names, dictionary)
    warnings.extend(column_warnings)

    framed = raw.with_row_index("excel_row", offset=FIRST_DATA_ROW).with_columns(
        pl.col("excel_row").cast(pl.Int64)
    )
    non_empty = pl.any_horizontal(
        [pl.col(h).str.strip_chars().fill_null("") != "" for h in headers]
    )
    framed = framed.filter(non_empty)
    patient = pl.col(patient_header).str.strip_chars()
    blank_ids = framed.filter(patient.is_null() | (patient == ""))["excel_row"].to_list()
    if blank_ids:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r}, column {patient_header!r}: blank patient id in "
            f"Excel row(s) {format_rows(blank_ids)}"
        )

    parsed = parse_lab_columns(framed, {c.name: c.header for c in columns})
    parsed = parsed.select(
        patient.alias("dicom_patient_id"),
        pl.col(patient_header).alias(PATIENT_COLUMN),  # the source string, IDC's case column
        pl.col("excel_row"),
        *[
            expr
            for c in columns
            for expr in (
                pl.col(c.header).alias(c.name),
                pl.col(f"{c.name}_value"),
                pl.col(f"{c.name}_qualifier"),
                pl.col(f"__{c.name}_kind"),
                pl.col(f"__{c.name}_int"),
            )
        ],
    )

    issues: list[CellIssue] = []
    normalisations: list[Normalisation] = []
    for c in columns:
        kind_col = f"__{c.name}_kind"
        flagged = parsed.filter(pl.col(kind_col).is_in(["invalid", "below_detection_limit"]))
        for row, value, kind in flagged.select("excel_row", c.name, kind_col).iter_rows():
            message = (
                "not a number, a censored number (<x, >x) or '<Nachweisgrenze'; "
                "_value and _qualifier left null"
                if kind == "invalid"
                else "below the detection limit: qualifier '<', no value"
            )
            issues.append(CellIssue(str(path), LAB_SHEET, row, c.header, value, kind, message))
        if c.is_hemoglobin:
            parsed, normalisation, odd = _normalise_hemoglobin(parsed, c)
            normalisations.append(normalisation)
            issues.extend(
                CellIssue(
                    str(path),
                    LAB_SHEET,
                    row,
                    c.header,
                    value,
                    "invalid",
                    "hemoglobin above 25 but not a whole number: neither clearly g/dL nor g/L; "
                    "left unconverted",
                )
                for row, value in odd
            )

    invalid = [i for i in issues if i.kind == "invalid"]
    if strict and invalid:
        listed = "\n  ".join(str(i) for i in invalid[:50])
        more = f"\n  ... and {len(invalid) - 50} more" if len(invalid) > 50 else ""
        raise ClinicalDataError(
            f"{len(invalid)} lab cell(s) cannot be understood:\n  {listed}{more}"
        )
    warnings.extend(str(i) for i in invalid)
    below = [i for i in issues if i.kind == "below_detection_limit"]
    for c in columns:
        rows = [i.row for i in below if i.column == c.header]
        if rows:
            warnings.append(
                f"{path}: sheet {LAB_SHEET!r}, column {c.header!r}: {len(rows)} cell(s) below "
                f"the detection limit ('<Nachweisgrenze'), read as qualifier '<' with no value; "
                f"Excel rows {format_rows(rows)}"
            )
    table = parsed.select(pl.exclude(r"^__.*$"))
    return LabSheet(
        path=path,
        patient_header=patient_header,
        patient_position=patient_position,
        columns=tuple(columns),
        table=table,
        issues=tuple(issues),
        normalisations=tuple(normalisations),
        warnings=tuple(warnings),
    )


def _normalise_hemoglobin(
    parsed: pl.DataFrame, column: LabColumn
) -> tuple[pl.DataFrame, Normalisation, list[tuple[int, str]]]:
    value = pl.col(f"{column.name}_value")
    integer_looking = pl.col(f"__{column.name}_int")
    converts = value.is_not_null() & integer_looking & (value > HEMOGLOBIN_G_PER_L_ABOVE)
    odd = value.is_not_null() & ~integer_looking & (value > HEMOGLOBIN_G_PER_L_ABOVE)
    rows = parsed.filter(converts)["excel_row"].to_list()
    odd_cells = [
        (int(r), str(v)) for r, v in parsed.filter(odd).select("excel_row", column.name).iter_rows()
    ]
    parsed = parsed.with_columns(
        pl.when(converts)
        .then((value / 10.0).round(1))
        .otherwise(value)
        .alias(f"{column.name}_value")
    )
    return (
        parsed,
        Normalisation(
            column=f"{column.name}_value",
            source_column=column.header,
            rule=HEMOGLOBIN_RULE,
            sheet=LAB_SHEET,
            rows=tuple(int(r) for r in rows),
        ),
        odd_cells,
    )
