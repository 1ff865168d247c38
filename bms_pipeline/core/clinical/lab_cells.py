"""lab_values.xlsx: censored, German-formatted lab cells read without losing anything, and
nothing published that the collection does not define.

Every cell is read as a string (calamine through fastexcel), so no coercion happens before
the rules below see it; rows and columns are those a spreadsheet user sees (`workbook`).
The header row is the sheet's first row with a value. The table publishes only the
columns sheet ``idc_dictionary`` defines (the shipped LOINC table when that sheet is
missing), plus ``patient_id``: any other column (free text such as ``bemerkung`` or
``station``, or a column without a header, e.g. under a merged header cell) is left out and
named by its position only (Excel letter and number), because a header can itself be text
nobody reviewed. Each lab column then becomes three:

- ``<col>``: the source string, exactly as the workbook holds it (``>1800``, ``<0,2``,
  ``<Nachweisgrenze``, `` 12,5 ``), for every cell that holds a value or a known token;
- ``<col>_value``: FLOAT, the number in the cell (German decimal comma parsed);
- ``<col>_qualifier``: ``<`` or ``>`` for a censored cell, else null.

What a cell may hold (surrounding whitespace ignored):

=======================  ============================  =======================================
cell                     ``_value``                    ``_qualifier`` / report
=======================  ============================  =======================================
blank                    null                          null
``12,5`` / numeric cell  12.5 (the comma is the decimal separator; a numeric Excel cell is
                         a number whatever calamine renders; ``1.234,5`` with dot groups and
                         a comma is 1234.5)
``1.234`` as text        null                          null; a warning: a dot before exactly
                                                       three digits is 1.234 or (German
                                                       grouping) 1234, so it is not guessed
``1e3`` as text          1000.0                        null; a warning (scientific notation)
``<0,2`` / ``> 1800``    0.2 / 1800.0                  ``<`` / ``>``
``<Nachweisgrenze``      null                          ``<`` (below the detection limit; a
                                                       note per column with the Excel rows)
``n.b.``, ``nicht        null                          null (not determined; a note per
bestimmt``, ``n.d.``                                   column with the Excel rows)
anything else            null                          null, and the string column is null
                                                       too: the cell is reported by sheet,
                                                       Excel row and column and its content
                                                       never reaches a table, log or message
                                                       (``strict=True``: a ClinicalDataError)
=======================  ============================  =======================================

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

from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_name
from bms_pipeline.core.clinical.patients import PSEUDONYM_PATTERN, ClinicalDataError
from bms_pipeline.core.clinical.workbook import (
    MAX_UNPACKED_BYTES,
    Workbook,
    column_letter,
    open_workbook,
)
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
FIRST_DATA_ROW = 2  # Excel row of the first data row when the headers are in row 1

CellKind = Literal[
    "blank",
    "number",
    "censored",
    "below_detection_limit",
    "not_determined",
    "ambiguous",
    "scientific",
    "invalid",
]
WARNING_KINDS = frozenset({"invalid", "ambiguous", "scientific", "unit"})
"""Issues that are warnings (``strict=True``: errors); the others are notes."""

# A number as the German lab system writes it, or as calamine renders a numeric cell.
_NUM_DOT = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_COMMA = r"[+-]?(?:\d+,\d+|,\d+)"
_NUM_GROUPED = r"[+-]?\d{1,3}(?:\.\d{3})+(?:,\d+)?"
_AMBIGUOUS_DOT = r"^[+-]?[1-9]\d{0,2}\.\d{3}$"  # 1.234: a decimal point or a German group
_SCIENTIFIC = r"[eE]"
_INTEGER_LOOKING = r"^[+-]?\d+(?:[.,]0+)?$"
_BELOW_DETECTION = r"(?i)^(?:<\s*|unter\s+(?:der\s+)?)(?:nachweisgrenze|nwg)$"
_NOT_DETERMINED = r"(?i)^(?:n\.\s?b\.?|nb|nicht\s+bestimmt|n\.\s?d\.?|nd|not\s+done)$"
_LOINC_IN_LABEL = re.compile(r"LOINC:\s*([0-9]+-[0-9])")


@dataclass(frozen=True)
class CellIssue:
    """One lab cell that needs a human's attention, located as a spreadsheet user would.

    It never holds the cell's content: a cell that is not a value may be free text naming
    a person, and issues reach logs, the Dagster instance and the console."""

    file: str
    sheet: str
    row: int  # 1-based Excel row
    column: str  # the source header (a column the collection defines)
    letter: str  # its Excel column letter
    kind: str  # a CellKind, or "unit" (hemoglobin in neither unit)
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: sheet {self.sheet!r}, row {self.row}, column {self.column!r} "
            f"({self.letter}): {self.message}"
        )


@dataclass(frozen=True)
class LeftOutColumn:
    """A sheet column the table does not publish, named by its place only."""

    sheet: str
    position: int  # 0-based
    reason: str
    cells: int  # non-empty data cells it held

    def describe(self) -> str:
        return (
            f"sheet {self.sheet!r}, column {column_letter(self.position)} "
            f"(column {self.position + 1}): {self.reason}; left out of the table "
            f"({self.cells} non-empty cell(s), not shown)"
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
    label: str  # column_label: from idc_dictionary, else the shipped LOINC table
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
    left_out_columns: tuple[LeftOutColumn, ...] = field(default=())


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

    The one implementation of the cell rules in the module docstring, for text cells: the
    caller turns an ``ambiguous`` cell that is a numeric Excel cell into a ``number``
    (`_settle_numeric_cells`). Intermediate results are materialised stage by stage so each
    regex runs once per cell (100,000-row sheets).
    """
    stages: list[list[pl.Expr]] = [[], [], [], []]
    temporary: list[str] = []
    for name, source in sources.items():
        t = f"__{name}"
        temporary += [f"{t}_s", f"{t}_body", f"{t}_sign", f"{t}_ndl", f"{t}_nd", f"{t}_num"]
        temporary += [f"{t}_amb", f"{t}_sci"]
        stages[0].append(pl.col(source).str.strip_chars().alias(f"{t}_s"))
        s = pl.col(f"{t}_s")
        stages[1] += [
            s.str.extract(r"^([<>])", 1).alias(f"{t}_sign"),
            s.str.replace(r"^[<>]\s*", "").alias(f"{t}_body"),
            s.str.contains(_BELOW_DETECTION).fill_null(False).alias(f"{t}_ndl"),
            s.str.contains(_NOT_DETERMINED).fill_null(False).alias(f"{t}_nd"),
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
            body.str.contains(_AMBIGUOUS_DOT).fill_null(False).alias(f"{t}_amb"),
            body.str.contains(_SCIENTIFIC).fill_null(False).alias(f"{t}_sci"),
        ]
        blank = s.is_null() | (s == "")
        below_limit, sign, number = pl.col(f"{t}_ndl"), pl.col(f"{t}_sign"), pl.col(f"{t}_num")
        not_determined, ambiguous = pl.col(f"{t}_nd"), pl.col(f"{t}_amb")
        parsed = number.is_not_null()
        stages[3] += [
            pl.when(below_limit).then(None).otherwise(number).alias(f"{name}_value"),
            pl.when(below_limit)
            .then(pl.lit("<"))
            .when(parsed)
            .then(sign)
            .otherwise(None)
            .alias(f"{name}_qualifier"),
            pl.when(blank)
            .then(pl.lit("blank"))
            .when(below_limit)
            .then(pl.lit("below_detection_limit"))
            .when(not_determined)
            .then(pl.lit("not_determined"))
            .when(parsed & ambiguous)
            .then(pl.lit("ambiguous"))
            .when(parsed & pl.col(f"{t}_sci"))
            .then(pl.lit("scientific"))
            .when(parsed & sign.is_not_null())
            .then(pl.lit("censored"))
            .when(parsed)
            .then(pl.lit("number"))
            .otherwise(pl.lit("invalid"))
            .alias(f"{t}_kind"),
        ]
    lazy = frame.lazy()
    for stage in stages:
        lazy = lazy.with_columns(stage)
    lazy = lazy.drop(temporary)
    # A text cell's ambiguous number is not guessed; an invalid cell is not published.
    for name, source in sources.items():
        kind = pl.col(f"__{name}_kind")
        lazy = lazy.with_columns(
            pl.when(kind == "ambiguous")
            .then(None)
            .otherwise(pl.col(f"{name}_value"))
            .alias(f"{name}_value"),
            pl.when(kind == "ambiguous")
            .then(None)
            .otherwise(pl.col(f"{name}_qualifier"))
            .alias(f"{name}_qualifier"),
            pl.when(kind == "invalid").then(None).otherwise(pl.col(source)).alias(source),
        )
    return lazy.collect()


def parse_lab_strings(values: pl.Series) -> pl.DataFrame:
    """Parse lab cell strings (as text cells) into ``value`` (Float64), ``qualifier``,
    ``kind`` and ``published`` (the string the table keeps: null for an invalid cell)."""
    parsed = parse_lab_columns(pl.DataFrame({"s": values.cast(pl.String)}), {"x": "s"})
    return parsed.select(
        pl.col("x_value").alias("value"),
        pl.col("x_qualifier").alias("qualifier"),
        pl.col("__x_kind").alias("kind"),
        pl.col("s").alias("published"),
    )


def parse_lab_value(text: str | None) -> tuple[float | None, str | None, CellKind]:
    """One text cell: ``"<0,2"`` -> ``(0.2, "<", "censored")``."""
    row = parse_lab_strings(pl.Series([text], dtype=pl.String)).row(0)
    return row[0], row[1], row[2]


# --------------------------------------------------------------------------- sheet reading


@dataclass(frozen=True)
class SheetGrid:
    """A sheet as calamine reads it (every cell a string, no header), placed in Excel's grid:
    frame row i is Excel row ``first_row + i``, frame column j column ``first_column + j``."""

    name: str
    frame: pl.DataFrame
    first_row: int  # 1-based
    first_column: int  # 0-based

    @property
    def headers(self) -> list[str | None]:
        """The first row's cells, stripped; None where empty (a merged or blank header)."""
        if self.frame.height == 0:
            return []
        return [v.strip() if v is not None and v.strip() else None for v in self.frame.row(0)]

    def body(self) -> pl.DataFrame:
        """The rows below the header, columns named c<position>, with ``excel_row``."""
        names = [f"c{self.first_column + j}" for j in range(self.frame.width)]
        return (
            self.frame.rename(dict(zip(self.frame.columns, names, strict=True)))
            .slice(1)
            .with_row_index("excel_row", offset=self.first_row + 1)
            .with_columns(pl.col("excel_row").cast(pl.Int64))
        )


def _sheet_frame(reader: fastexcel.ExcelReader, name: str) -> pl.DataFrame:
    """One sheet, every cell a string and no header row. fastexcel's eager overload of
    `load_sheet` returns a pyarrow type its stubs leave unknown; this call is the lazy one."""
    return reader.load_sheet(name, header_row=None, dtypes="string").to_polars()  # pyright: ignore[reportUnknownMemberType]


def read_sheet_grids(workbook: Workbook, sheets: Sequence[str]) -> dict[str, SheetGrid]:
    """Sheets with every cell as a string, blank rows and columns kept, each placed at its
    Excel row and column (`SheetXml.origin`)."""
    path = workbook.path
    try:
        reader = fastexcel.read_excel(path)
        frames = {name: _sheet_frame(reader, name) for name in sheets}
    except Exception as exc:  # fastexcel raises its own types for missing sheets/bad files
        raise ClinicalDataError(f"{path}: cannot read sheets {list(sheets)} ({exc})") from None
    grids: dict[str, SheetGrid] = {}
    for name, frame in frames.items():
        row, column = workbook.sheet_xml(name).origin()
        frame = frame.select(pl.all().cast(pl.String))
        grids[name] = SheetGrid(name, frame, row, column)
    return grids


def _safe_name(header: str | None) -> str | None:
    if header is None:
        return None
    try:
        return bigquery_name(header)
    except ColumnNameError:
        return None


def read_lab_dictionary(path: Path, grid: SheetGrid | None) -> tuple[dict[str, str], list[str]]:
    """Sheet idc_dictionary as {BigQuery-safe column: label}, plus warnings.

    A missing sheet (None) is a warning, not an error: the shipped LOINC table then defines
    and labels the standard columns, and the caller says so.
    """
    warnings: list[str] = []
    if grid is None:
        warnings.append(
            f"{path}: no sheet {DICTIONARY_SHEET!r}; the shipped LOINC table defines the lab "
            "columns and their labels"
        )
        return {}, warnings
    headers = [_safe_name(h) for h in grid.headers]
    missing = [c for c in DICTIONARY_COLUMNS if c not in headers]
    if missing:
        raise ClinicalDataError(
            f"{path}: sheet {DICTIONARY_SHEET!r}: no column(s) {missing} in its header row "
            f"(row {grid.first_row})"
        )
    body = grid.body()
    column_at, label_at = (f"c{grid.first_column + headers.index(c)}" for c in DICTIONARY_COLUMNS)
    labels: dict[str, str] = {}
    for row, column, label in body.select("excel_row", column_at, label_at).iter_rows():
        where = f"{path}: sheet {DICTIONARY_SHEET!r}, row {row}"
        if column is None or not column.strip():
            if label is not None and label.strip():
                warnings.append(f"{where}: a label without a column; ignored")
            continue
        try:
            name = bigquery_name(column)
        except ColumnNameError as exc:
            raise ClinicalDataError(f"{where}: {exc}") from None
        if label is None or not label.strip():
            warnings.append(f"{where}: column {column!r} has no label; its label is its name")
            label = column
        labels[name] = label.strip()
    return labels, warnings


def _lab_columns(
    path: Path, grid: SheetGrid, dictionary: dict[str, str], defined_by: str
) -> tuple[int, list[LabColumn], list[LeftOutColumn], list[str]]:
    """The patient column's position, the defined lab columns, the columns left out, and
    warnings: every header is matched by its BigQuery name against the defined columns."""
    warnings: list[str] = []
    columns: list[LabColumn] = []
    left_out: list[LeftOutColumn] = []
    patient: list[int] = []
    seen: dict[str, int] = {}
    body = grid.body()
    for j, header in enumerate(grid.headers):
        position = grid.first_column + j
        name = _safe_name(header)
        if header is None or name is None or (name not in dictionary and name != PATIENT_COLUMN):
            reason = (
                "no header (an empty or merged header cell)"
                if header is None
                else f"not a column sheet {DICTIONARY_SHEET!r} defines"
                if defined_by == DICTIONARY_SHEET
                else "not a column the shipped LOINC table defines"
            )
            cells = int(body[f"c{position}"].str.strip_chars().fill_null("").ne("").sum())
            left_out.append(LeftOutColumn(LAB_SHEET, position, reason, cells))
            continue
        assert header is not None
        if name in seen:
            raise ClinicalDataError(
                f"{path}: sheet {LAB_SHEET!r}: columns {column_letter(seen[name])} and "
                f"{column_letter(position)} both hold {name!r}"
            )
        seen[name] = position
        if name == PATIENT_COLUMN:
            patient.append(position)
            continue
        label = dictionary[name]
        found = _LOINC_IN_LABEL.search(label)
        loinc = found.group(1) if found else None
        expected = loinc_lab_columns().get(name, {}).get("loinc")
        if expected and loinc and loinc != expected:
            warnings.append(
                f"{path}: column {header!r} is labelled LOINC {loinc}, the shipped table says "
                f"{expected}"
            )
        columns.append(LabColumn(header, name, position, label, defined_by, loinc or expected))
    if not patient:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r} has no {PATIENT_COLUMN!r} column in its header row "
            f"(row {grid.first_row})"
        )
    absent = sorted(set(dictionary) - seen.keys())
    if absent and defined_by == DICTIONARY_SHEET:
        warnings.append(
            f"{path}: sheet {DICTIONARY_SHEET!r} defines column(s) {absent} that sheet "
            f"{LAB_SHEET!r} does not have"
        )
    return patient[0], columns, left_out, warnings


def read_lab_values(
    path: Path, *, strict: bool = False, max_unpacked: int = MAX_UNPACKED_BYTES
) -> LabSheet:
    """Read and parse lab_values.xlsx (sheet lab_values, defined and labelled by
    idc_dictionary).

    Cells that are not values are reported as `CellIssue` warnings (nothing of them kept);
    with ``strict=True`` they raise one ClinicalDataError listing them all. A data row
    without a patient id, or with one that is not a pseudonym, is always an error: its
    values could not be attached to anybody. Rows that are entirely blank are skipped.
    """
    if not path.is_file():
        raise ClinicalDataError(f"{path}: lab_values.xlsx does not exist")
    workbook = open_workbook(path, max_unpacked)
    sheets = workbook.sheet_names
    if LAB_SHEET not in sheets:
        raise ClinicalDataError(f"{path}: no sheet {LAB_SHEET!r} (sheets {sheets})")
    grids = read_sheet_grids(workbook, [n for n in (LAB_SHEET, DICTIONARY_SHEET) if n in sheets])
    grid = grids[LAB_SHEET]
    dictionary, warnings = read_lab_dictionary(path, grids.get(DICTIONARY_SHEET))
    defined_by = DICTIONARY_SHEET
    if DICTIONARY_SHEET not in grids:
        defined_by = "shipped loinc_lab_columns.csv"
        dictionary = {c: reference_label(c) or c for c in loinc_lab_columns()}
    patient_position, columns, left_out, column_warnings = _lab_columns(
        path, grid, dictionary, defined_by
    )
    warnings.extend(column_warnings)
    warnings.extend(f"{path}: {c.describe()}" for c in left_out)
    patient_header = grid.headers[patient_position - grid.first_column] or PATIENT_COLUMN

    framed = grid.body()
    kept = [f"c{patient_position}", *(f"c{c.position}" for c in columns)]
    non_empty = pl.any_horizontal([pl.col(k).str.strip_chars().fill_null("") != "" for k in kept])
    framed = framed.select("excel_row", *kept).filter(non_empty)
    patient = pl.col(f"c{patient_position}").str.strip_chars()
    blank_ids = framed.filter(patient.is_null() | (patient == ""))["excel_row"].to_list()
    if blank_ids:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r}, column {patient_header!r}: blank patient id in "
            f"Excel row(s) {format_rows(blank_ids)}"
        )
    malformed = framed.filter(~patient.str.contains(PSEUDONYM_PATTERN))["excel_row"].to_list()
    if malformed:
        raise ClinicalDataError(
            f"{path}: sheet {LAB_SHEET!r}, column {patient_header!r}: patient id in Excel "
            f"row(s) {format_rows(malformed)} is not a pseudonym (32 upper-case hex "
            "characters); not shown"
        )

    parsed = parse_lab_columns(framed, {c.name: f"c{c.position}" for c in columns})
    parsed = _settle_numeric_cells(parsed, workbook, columns)
    parsed = parsed.select(
        patient.alias("dicom_patient_id"),
        pl.col(f"c{patient_position}").alias(PATIENT_COLUMN),  # IDC's case column, as given
        pl.col("excel_row"),
        *[
            expr
            for c in columns
            for expr in (
                pl.col(f"c{c.position}").alias(c.name),
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
        flagged = parsed.filter(pl.col(kind_col).is_in(list(_MESSAGES)))
        letter = column_letter(c.position)
        for row, kind in flagged.select("excel_row", kind_col).iter_rows():
            issues.append(
                CellIssue(str(path), LAB_SHEET, row, c.header, letter, kind, _MESSAGES[kind])
            )
        if c.is_hemoglobin:
            parsed, normalisation, odd = _normalise_hemoglobin(parsed, c)
            normalisations.append(normalisation)
            issues.extend(
                CellIssue(
                    str(path),
                    LAB_SHEET,
                    row,
                    c.header,
                    letter,
                    "unit",
                    "hemoglobin above 25 but not a whole number: neither clearly g/dL nor g/L; "
                    "left unconverted",
                )
                for row in odd
            )

    flagged_issues = [i for i in issues if i.kind in WARNING_KINDS]
    if strict and flagged_issues:
        listed = "\n  ".join(str(i) for i in flagged_issues[:50])
        more = f"\n  ... and {len(flagged_issues) - 50} more" if len(flagged_issues) > 50 else ""
        raise ClinicalDataError(
            f"{len(flagged_issues)} lab cell(s) cannot be taken as they are:\n  {listed}{more}"
        )
    warnings.extend(str(i) for i in flagged_issues)
    for kind, what in _NOTES.items():
        for c in columns:
            rows = [i.row for i in issues if i.column == c.header and i.kind == kind]
            if rows:
                warnings.append(
                    f"{path}: sheet {LAB_SHEET!r}, column {c.header!r}: {len(rows)} cell(s) "
                    f"{what}; Excel rows {format_rows(rows)}"
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
        left_out_columns=tuple(left_out),
    )


_MESSAGES: dict[str, str] = {
    "invalid": "not a number, a censored number (<x, >x) or a known token "
    "('<Nachweisgrenze', 'n.b.'); not published (string, _value and _qualifier null)",
    "ambiguous": "a text number with a dot before exactly three digits: a decimal point "
    "(1.234) or a German thousands separator (1234); _value left null, not guessed",
    "scientific": "a number in scientific notation, which the lab system does not write; "
    "read as that number",
    "below_detection_limit": "below the detection limit",
    "not_determined": "not determined",
}
_NOTES = {
    "below_detection_limit": "below the detection limit ('<Nachweisgrenze'), read as "
    "qualifier '<' with no value",
    "not_determined": "not determined ('n.b.', 'nicht bestimmt'), read as no value",
}


def _settle_numeric_cells(
    parsed: pl.DataFrame, workbook: Workbook, columns: Sequence[LabColumn]
) -> pl.DataFrame:
    """An ``ambiguous`` cell that is a numeric Excel cell is a number: calamine rendered the
    stored double, there is no separator to guess. Looks only those cells up in the XML."""
    candidates: dict[tuple[int, int], LabColumn] = {}
    for c in columns:
        rows = parsed.filter(pl.col(f"__{c.name}_kind") == "ambiguous")["excel_row"].to_list()
        candidates.update({(int(r), c.position): c for r in rows})
    if not candidates:
        return parsed
    text = workbook.sheet_xml(LAB_SHEET).text_cells(candidates)
    for c in {id(c): c for c in candidates.values()}.values():
        numeric = [r for (r, p), col in candidates.items() if col is c and (r, p) not in text]
        if not numeric:
            continue
        source = f"c{c.position}"
        is_numeric = pl.col("excel_row").is_in(numeric)
        value = pl.col(source).str.strip_chars().str.replace(r"^[<>]\s*", "").cast(pl.Float64)
        parsed = parsed.with_columns(
            pl.when(is_numeric)
            .then(value)
            .otherwise(pl.col(f"{c.name}_value"))
            .alias(f"{c.name}_value"),
            pl.when(is_numeric)
            .then(pl.lit("number"))
            .otherwise(pl.col(f"__{c.name}_kind"))
            .alias(f"__{c.name}_kind"),
        )
    return parsed


def _normalise_hemoglobin(
    parsed: pl.DataFrame, column: LabColumn
) -> tuple[pl.DataFrame, Normalisation, list[int]]:
    value = pl.col(f"{column.name}_value")
    integer_looking = pl.col(f"__{column.name}_int")
    converts = value.is_not_null() & integer_looking & (value > HEMOGLOBIN_G_PER_L_ABOVE)
    odd = value.is_not_null() & ~integer_looking & (value > HEMOGLOBIN_G_PER_L_ABOVE)
    rows = parsed.filter(converts)["excel_row"].to_list()
    odd_rows = [int(r) for r in parsed.filter(odd)["excel_row"].to_list()]
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
        odd_rows,
    )
