"""The clinical and laboratory tables, their IDC metadata, and the files BigQuery loads.

IDC publishes each collection's tabular data as ``<collection_id>_<kind>`` tables in its
``idc_vNN_clinical`` BigQuery dataset, described by two metadata tables whose schemas are
fixed by IDC's clinical ETL (``table_metadata`` and ``column_metadata``) and summarised by
idc-index's ``clinical_index``. This module builds the same shapes (DESIGN.md section 5):

- ``<collection_id>_clinical``: ``dicom_patient_id``, ``source_batch``, then clinical.csv's
  columns under BigQuery-safe names (``patient_id`` included, as IDC keeps the source's
  patient column), each derived column right after its source
  (``dicom_patient_sex`` after ``gender``; ``dicom_patient_age`` and ``age_years`` after
  ``age``; ``ncit_concept_meaning`` after ``ncit_concept_code``). The source strings are kept.
- ``<collection_id>_laboratory``: ``dicom_patient_id``, ``source_batch``, ``patient_id``, then
  per lab column the source string, ``<col>_value`` (FLOAT) and ``<col>_qualifier`` (see `lab`).
- ``table_metadata`` and ``column_metadata``: IDC's columns, order and types exactly.
- ``clinical_index`` (a DuckDB view): idc-index's columns over column_metadata.

Conventions where IDC's schema leaves room (all documented in the metadata itself):

- ``table_name`` in both metadata tables is IDC's fully qualified BigQuery name
  ``<project>.<dataset>.<table>`` when a project and dataset are configured
  (`BigQueryTarget`, env ``BMS_BQ_PROJECT`` and ``BMS_BQ_DATASET``), else the bare table
  name: there is no BigQuery location to name. ``clinical_index`` takes
  ``short_table_name`` as the last dotted part, which is the table in both forms.
- The provenance columns are IDC's ETL's: ``dicom_patient_id`` (the source patient id,
  whitespace stripped: the DICOM PatientID) and ``source_batch``, labelled
  ``idc_provenance_dicom_patient_id`` and ``idc_provenance_source_batch``, with that label
  as their only original header and no source file, sheet, batch or column number.
- ``case_col`` is true for the source's patient column (``patient_id``) only, as IDC's ETL
  marks it; that column keeps the source string.
- ``data_type`` holds the BigQuery type (STRING, INTEGER, FLOAT).
- ``column_numbers`` are 0-based source positions, as IDC's ETL records them.
- ``values`` is filled only when a column has 20 or fewer distinct non-null values;
  ``values_source`` says where they came from and, for a typed companion, every
  normalisation applied to it (hemoglobin: the rule and the Excel rows it changed).
- ``table_metadata``: ``post_process_src`` is the source file relative to the data root and
  the md5 fields its md5 (added, prior and updated are equal for a table's first release);
  ``source_info.table_last_modified`` is the source file's mtime (UTC) and
  ``source_info.table_size`` its size in bytes; the ``idc_version_*`` fields are null unless
  given, because IDC assigns them when it ingests the tables.

Writing (`write_outputs`) is atomic per file and serialised by an exclusive lock next to the
DuckDB file, and the DuckDB file is rebuilt in a temporary copy that replaces the old one in
a single rename, so concurrent runs never leave a corrupt or half-written database, and
tables other writers put there (e.g. the DICOM index) are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from polars.datatypes import DataTypeClass

from bms_pipeline.core.clinical.lab import (
    HEMOGLOBIN_UNIT,
    LAB_SHEET,
    LabSheet,
    read_lab_values,
)
from bms_pipeline.core.clinical.naming import ColumnNameError, bigquery_name, bigquery_names
from bms_pipeline.core.clinical.patients import (
    ClinicalDataError,
    PatientClinical,
    ncit_leukemia,
    read_clinical_csv,
)
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.store import (
    atomic_write_parquet,
    atomic_write_text,
    duckdb_lock_path,
    exclusive_lock,
    rebuild_duckdb,
)

logger = logging.getLogger(__name__)

BQ_PROJECT_ENV = "BMS_BQ_PROJECT"
BQ_DATASET_ENV = "BMS_BQ_DATASET"
TABLE_METADATA = "table_metadata"
COLUMN_METADATA = "column_metadata"
CLINICAL_INDEX = "clinical_index"
MAX_VALUES = 20
SOURCE_BATCH = 0
DICOM_PATIENT_COLUMN = "dicom_patient_id"
SOURCE_BATCH_COLUMN = "source_batch"
CASE_COLUMN = "patient_id"
"""The source's patient column, kept in both tables: IDC's ETL marks it as case_col."""
PROVENANCE_LABELS = {
    DICOM_PATIENT_COLUMN: "idc_provenance_dicom_patient_id",
    SOURCE_BATCH_COLUMN: "idc_provenance_source_batch",
}
"""The labels IDC's clinical ETL gives the columns it adds (``DICOM_LABEL``, ``SOURCE_BATCH_LABEL``)."""
_PROVENANCE_DESCRIPTIONS = {
    DICOM_PATIENT_COLUMN: "DICOM PatientID of the patient's images: the source patient_id, "
    "whitespace stripped",
    SOURCE_BATCH_COLUMN: "source batch (0: the single delivery of the source files)",
}
VALUES_FROM_DATA = "derived from inspection of values"  # IDC's wording

OPTION = pl.Struct({"option_code": pl.String, "option_description": pl.String})
SOURCE_INFO = pl.Struct(
    {
        "srcs": pl.List(pl.String),
        "md5": pl.String,
        "table_last_modified": pl.String,
        "table_size": pl.Int64,
    }
)
COLUMN_METADATA_SCHEMA = pl.Schema(
    {
        "collection_id": pl.String,
        "case_col": pl.Boolean,
        "table_name": pl.String,
        "column": pl.String,
        "column_label": pl.String,
        "data_type": pl.String,
        "original_column_headers": pl.List(pl.String),
        "values": pl.List(OPTION),
        "values_source": pl.String,
        "files": pl.List(pl.String),
        "sheet_names": pl.List(pl.String),
        "batch": pl.List(pl.Int64),
        "column_numbers": pl.List(pl.Int64),
    }
)
"""IDC's column_metadata (ETL ``create_meta_table``): names, order and types."""

TABLE_METADATA_SCHEMA = pl.Schema(
    {
        "collection_id": pl.String,
        "table_name": pl.String,
        "table_description": pl.String,
        "idc_version_table_added": pl.String,
        "table_added_datetime": pl.String,
        "post_process_src": pl.String,
        "post_process_src_added_md5": pl.String,
        "idc_version_table_prior": pl.String,
        "post_process_src_prior_md5": pl.String,
        "idc_version_table_updated": pl.String,
        "table_updated_datetime": pl.String,
        "post_process_src_updated_md5": pl.String,
        "number_batches": pl.Int64,
        "source_info": pl.List(SOURCE_INFO),
    }
)
"""IDC's table_metadata (ETL ``create_meta_summary``): names, order and types."""

CLINICAL_INDEX_SQL = f"""
SELECT
  collection_id,
  table_name,
  string_split(table_name, '.')[-1] AS short_table_name,
  "column",
  NULLIF(column_label, '') AS column_label,
  "values"
FROM {COLUMN_METADATA}
ORDER BY collection_id, table_name
"""
"""idc-index's clinical_index over column_metadata (short_table_name = last name part)."""

_METADATA_DESCRIPTIONS: dict[str, dict[str, str]] = {
    COLUMN_METADATA: {
        "collection_id": "collection the table belongs to",
        "case_col": "true for the source's patient column (patient_id), as IDC marks it",
        "table_name": "<project>.<dataset>.<table> when a BigQuery target is set, else the table",
        "column": "column name in the table",
        "column_label": "human readable name of the column",
        "data_type": "BigQuery type of the column",
        "original_column_headers": "source header(s) the column was made from",
        "values": "distinct values, when there are 20 or fewer",
        "values_source": "where values came from, and any normalisation of the column",
        "files": "source file(s), relative to the data root",
        "sheet_names": "source sheet(s), for spreadsheets",
        "batch": "source batch of each source column",
        "column_numbers": "0-based position of each source column",
    },
    TABLE_METADATA: {
        "collection_id": "collection the table belongs to",
        "table_name": "<project>.<dataset>.<table> when a BigQuery target is set, else the table",
        "table_description": "what the table holds",
        "table_added_datetime": "when the table was built",
        "post_process_src": "source file, relative to the data root",
        "post_process_src_added_md5": "md5 of the source file",
        "number_batches": "number of source batches",
        "source_info": "source files with md5, mtime and size in bytes",
    },
}

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


@dataclass(frozen=True)
class BigQueryTarget:
    """Where the tables go in BigQuery, baked into the metadata's table_name as IDC does.

    With both a project and a dataset, table_name is IDC's ``<project>.<dataset>.<table>``;
    with neither, the bare table name (and load.sh asks for both). One without the other
    names no BigQuery location, so it is refused.
    """

    project: str | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        if bool(self.project) != bool(self.dataset):
            raise ValueError(
                f"BigQuery target: set both {BQ_PROJECT_ENV} and {BQ_DATASET_ENV}, or neither "
                f"(project {self.project!r}, dataset {self.dataset!r})"
            )

    @classmethod
    def from_env(cls) -> BigQueryTarget:
        return cls(
            project=os.environ.get(BQ_PROJECT_ENV) or None,
            dataset=os.environ.get(BQ_DATASET_ENV) or None,
        )

    @property
    def configured(self) -> bool:
        return bool(self.project and self.dataset)

    def qualified(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}" if self.configured else table


@dataclass(frozen=True)
class ClinicalTables:
    """Everything `build_clinical_tables` made, ready for `write_outputs` and the checks."""

    collection_id: str
    clinical: pl.DataFrame
    laboratory: pl.DataFrame
    table_metadata: pl.DataFrame
    column_metadata: pl.DataFrame
    target: BigQueryTarget
    warnings: list[str] = field(default_factory=list)
    lab: LabSheet | None = None
    left_out: dict[str, list[str]] = field(default_factory=dict)
    """Patient ids left out of each table because they have no converted slide."""

    @property
    def clinical_name(self) -> str:
        return f"{self.collection_id}_clinical"

    @property
    def laboratory_name(self) -> str:
        return f"{self.collection_id}_laboratory"

    @property
    def data_tables(self) -> dict[str, pl.DataFrame]:
        """The tables column_metadata describes, by table name."""
        return {self.clinical_name: self.clinical, self.laboratory_name: self.laboratory}

    @property
    def tables(self) -> dict[str, pl.DataFrame]:
        """Every table to write, by table name."""
        return {
            **self.data_tables,
            TABLE_METADATA: self.table_metadata,
            COLUMN_METADATA: self.column_metadata,
        }


@dataclass(frozen=True)
class WrittenTables:
    """Paths and row counts of what `write_outputs` wrote."""

    parquet: dict[str, Path]
    schemas: dict[str, Path]
    duckdb: Path
    load_script: Path
    row_counts: dict[str, int]
    views: tuple[str, ...] = (CLINICAL_INDEX,)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _Source:
    path: Path
    relative: str
    md5: str
    size: int
    modified: str


def _source(layout: DataLayout, path: Path) -> _Source:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    stat = path.stat()
    try:
        relative = path.resolve().relative_to(layout.root.resolve()).as_posix()
    except ValueError:
        relative = path.name
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    return _Source(path, relative, digest.hexdigest(), stat.st_size, modified)


def _age_years(age: str) -> int:
    """DICOM Age String -> whole years, rounding down (``006M`` -> 0)."""
    return int(int(age[:3]) * _AGE_UNIT_DAYS[age[3]] // 365.25)


@dataclass(frozen=True)
class _ColumnInfo:
    """What column_metadata says about one output column, apart from its values."""

    label: str
    headers: tuple[str, ...]
    numbers: tuple[int, ...]
    source: _Source | None
    sheet: str | None = None
    value_descriptions: Mapping[str, str] | None = None
    values_note: str | None = None
    notes: tuple[str, ...] = ()


def _provenance(case_header: str) -> dict[str, _ColumnInfo]:
    """column_metadata of IDC's provenance columns: the ETL's label, and no source column."""
    derived = (
        f"the source column {case_header!r} (case_col) with surrounding whitespace removed; "
        "equals the DICOM PatientID"
    )
    return {
        DICOM_PATIENT_COLUMN: _ColumnInfo(
            PROVENANCE_LABELS[DICOM_PATIENT_COLUMN],
            (PROVENANCE_LABELS[DICOM_PATIENT_COLUMN],),
            (),
            None,
            notes=(derived,),
        ),
        SOURCE_BATCH_COLUMN: _ColumnInfo(
            PROVENANCE_LABELS[SOURCE_BATCH_COLUMN],
            (PROVENANCE_LABELS[SOURCE_BATCH_COLUMN],),
            (),
            None,
        ),
    }


def _read_clinical(source: _Source) -> tuple[pl.DataFrame, dict[str, _ColumnInfo]]:
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
    info = _provenance(headers[position[CASE_COLUMN]])
    for name, header in zip(names, headers, strict=True):
        order.append(name)
        info[name] = _ColumnInfo(
            _CLINICAL_LABELS.get(name, header), (header,), (position[name],), source
        )
        for extra in _CLINICAL_DERIVED.get(name, ()):
            order.append(extra)
            info[extra] = _ColumnInfo(_CLINICAL_LABELS[extra], (header,), (position[name],), source)
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


def _laboratory(lab: LabSheet, source: _Source) -> tuple[pl.DataFrame, dict[str, _ColumnInfo]]:
    """The laboratory table: IDC's provenance columns, then the source columns in source
    order: the patient column (case_col) and string/_value/_qualifier per lab column."""
    sheet = LAB_SHEET
    info = _provenance(lab.patient_header)
    info[CASE_COLUMN] = _ColumnInfo(
        f"patient id as given in sheet {LAB_SHEET!r} (the DICOM PatientID)",
        (lab.patient_header,),
        (lab.patient_position,),
        source,
        sheet,
    )
    positioned: list[tuple[int, list[str]]] = [(lab.patient_position, [CASE_COLUMN])]
    notes = {n.column: n.describe() for n in lab.normalisations}
    for c in lab.columns:
        unit = f" in {HEMOGLOBIN_UNIT}" if c.is_hemoglobin else ""
        where = ((c.header,), (c.position,), source, sheet)
        info[c.name] = _ColumnInfo(c.label, *where)
        info[f"{c.name}_value"] = _ColumnInfo(
            f"{c.label} [numeric value{unit}]",
            *where,
            notes=(notes[f"{c.name}_value"],) if f"{c.name}_value" in notes else (),
        )
        info[f"{c.name}_qualifier"] = _ColumnInfo(
            f"{c.label} [censoring qualifier]",
            *where,
            value_descriptions={
                "<": f"below {c.name}_value; below the detection limit where that is null",
                ">": f"above {c.name}_value",
            },
            values_note="descriptions defined by bms_pipeline",
            notes=("'<' with a null value marks '<Nachweisgrenze' (below the detection limit)",),
        )
        positioned.append((c.position, [c.name, f"{c.name}_value", f"{c.name}_qualifier"]))
    order = [DICOM_PATIENT_COLUMN, SOURCE_BATCH_COLUMN]
    order += [name for _, names in sorted(positioned) for name in names]
    table = lab.table.with_columns(pl.lit(SOURCE_BATCH, dtype=pl.Int64).alias(SOURCE_BATCH_COLUMN))
    return table.select(order), info


def bigquery_type(dtype: pl.DataType | DataTypeClass) -> str:
    """The BigQuery type of a polars column type (its element type for a list)."""
    if isinstance(dtype, pl.List):
        return bigquery_type(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return "RECORD"
    if dtype == pl.Boolean:
        return "BOOLEAN"
    if dtype.is_integer():
        return "INTEGER"
    if dtype.is_float():
        return "FLOAT"
    if dtype == pl.Date:
        return "DATE"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP"
    if dtype in (pl.String, pl.Null, pl.Categorical):
        return "STRING"
    raise TypeError(f"no BigQuery type for polars type {dtype}")


def _values(
    column: pl.Series, descriptions: Mapping[str, str] | None
) -> list[dict[str, str | None]]:
    distinct = column.drop_nulls().unique()
    if distinct.len() == 0 or distinct.len() > MAX_VALUES:
        return []
    codes = distinct.sort().cast(pl.String).to_list()
    return [
        {"option_code": code, "option_description": (descriptions or {}).get(code)}
        for code in codes
    ]


def _column_rows(
    collection_id: str,
    table_name: str,
    frame: pl.DataFrame,
    info: Mapping[str, _ColumnInfo],
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, dtype in frame.schema.items():
        meta = info[name]
        values = _values(frame[name], meta.value_descriptions)
        parts = [VALUES_FROM_DATA] if values else []
        if values and meta.values_note:
            parts.append(meta.values_note)
        parts.extend(meta.notes)
        rows.append(
            {
                "collection_id": collection_id,
                "case_col": name == CASE_COLUMN,
                "table_name": table_name,
                "column": name,
                "column_label": meta.label,
                "data_type": bigquery_type(dtype),
                "original_column_headers": list(meta.headers),
                "values": values,
                "values_source": "; ".join(parts) or None,
                "files": [meta.source.relative] * len(meta.headers) if meta.source else [],
                "sheet_names": [meta.sheet] * len(meta.headers) if meta.sheet else [],
                "batch": [SOURCE_BATCH] * len(meta.headers) if meta.source else [],
                "column_numbers": list(meta.numbers),
            }
        )
    return rows


def _table_row(
    collection_id: str,
    table_name: str,
    description: str,
    source: _Source,
    added: str,
    idc_version: str | None,
) -> dict[str, object]:
    return {
        "collection_id": collection_id,
        "table_name": table_name,
        "table_description": description,
        "idc_version_table_added": idc_version,
        "table_added_datetime": added,
        "post_process_src": source.relative,
        "post_process_src_added_md5": source.md5,
        "idc_version_table_prior": idc_version,
        "post_process_src_prior_md5": source.md5,
        "idc_version_table_updated": idc_version,
        "table_updated_datetime": added,
        "post_process_src_updated_md5": source.md5,
        "number_batches": 1,
        "source_info": [
            {
                "srcs": [source.relative],
                "md5": source.md5,
                "table_last_modified": source.modified,
                "table_size": source.size,
            }
        ],
    }


def build_clinical_tables(
    layout: DataLayout,
    collection: CollectionConfig,
    *,
    strict: bool = False,
    target: BigQueryTarget | None = None,
    added_at: datetime | None = None,
    idc_version: str | None = None,
    converted_patients: Collection[str] | None = None,
) -> ClinicalTables:
    """Read raw/clinical and build the clinical, laboratory and IDC metadata tables.

    Invalid clinical.csv rows raise ClinicalDataError (`read_clinical_csv`'s rules). Lab cells
    that cannot be understood become warnings naming sheet, Excel row and column, or with
    ``strict=True`` a ClinicalDataError. ``added_at`` fixes table_added_datetime (default:
    now, UTC), so a caller can make the output byte-reproducible. With ``converted_patients``
    (and unless the collection keeps them) rows of other patients are left out of both
    tables and listed in ``left_out``: only patients with DICOM are published.
    """
    target = target or BigQueryTarget.from_env()
    cid = collection.collection_id
    clinical_source = _source_checked(layout, layout.clinical_csv, "clinical.csv")
    lab_source = _source_checked(layout, layout.lab_values_xlsx, "lab_values.xlsx")

    clinical, clinical_info = _read_clinical(clinical_source)
    lab = read_lab_values(layout.lab_values_xlsx, strict=strict)
    laboratory, lab_info = _laboratory(lab, lab_source)
    warnings = list(lab.warnings)
    unknown = sorted(set(laboratory["dicom_patient_id"]) - set(clinical["dicom_patient_id"]))
    if unknown:
        warnings.append(
            f"{layout.lab_values_xlsx}: {len(unknown)} lab patient(s) not in clinical.csv: "
            + ", ".join(unknown[:20])
            + (" ..." if len(unknown) > 20 else "")
        )
    repeated = duplicate_patients(laboratory)
    if repeated:
        warnings.append(
            f"{layout.lab_values_xlsx}: sheet {LAB_SHEET!r} has several rows for patient(s) "
            + ", ".join(repeated[:20])
        )

    left_out: dict[str, list[str]] = {}
    if converted_patients is not None and not collection.keep_patients_without_dicom:
        clinical, left_out[f"{cid}_clinical"] = restrict_to_patients(clinical, converted_patients)
        laboratory, left_out[f"{cid}_laboratory"] = restrict_to_patients(
            laboratory, converted_patients
        )

    clinical_name, laboratory_name = f"{cid}_clinical", f"{cid}_laboratory"
    added = str(added_at or datetime.now(UTC))
    table_metadata = pl.DataFrame(
        [
            _table_row(
                cid,
                target.qualified(clinical_name),
                "Per patient age, sex and leukemia diagnosis (NCIt) from clinical.csv, with "
                "the DICOM PatientSex and PatientAge derived from them",
                clinical_source,
                added,
                idc_version,
            ),
            _table_row(
                cid,
                target.qualified(laboratory_name),
                f"Per patient laboratory values from sheet {LAB_SHEET!r} of lab_values.xlsx "
                "(LOINC-coded columns, labels from sheet 'idc_dictionary'). Each source string "
                "is kept exactly; <col>_value (FLOAT, decimal comma parsed) and "
                "<col>_qualifier (< or >) are typed companions; hemoglobin_value is in g/dL",
                lab_source,
                added,
                idc_version,
            ),
        ],
        schema=TABLE_METADATA_SCHEMA,
        orient="row",
    )
    column_metadata = pl.DataFrame(
        _column_rows(cid, target.qualified(clinical_name), clinical, clinical_info)
        + _column_rows(cid, target.qualified(laboratory_name), laboratory, lab_info),
        schema=COLUMN_METADATA_SCHEMA,
        orient="row",
    )
    return ClinicalTables(
        collection_id=cid,
        clinical=clinical,
        laboratory=laboratory,
        table_metadata=table_metadata,
        column_metadata=column_metadata,
        target=target,
        warnings=warnings,
        lab=lab,
        left_out=left_out,
    )


def _source_checked(layout: DataLayout, path: Path, what: str) -> _Source:
    if not path.is_file():
        raise ClinicalDataError(f"{path}: {what} does not exist")
    return _source(layout, path)


# --------------------------------------------------------------------------- QA helpers


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
    "freetext", "text", "anamnese",
))
# fmt: on
_DATE_LIKE = r"\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b"
_FREE_TEXT_CHARS = 64
_FREE_TEXT_WORDS = 8


def free_text_phi_columns(df: pl.DataFrame, allowed: Iterable[str] = ()) -> list[str]:
    """Columns that could identify a person: a name-like header or free-text content.

    Heuristic, meant to fail loud: a header token such as name, dob, birth, address,
    comment or text; or a string column holding a value longer than 64 characters, of 8 or
    more words, or that looks like a calendar date. ``allowed`` exempts reviewed columns.
    """
    exempt = set(allowed)
    flagged: list[str] = []
    for name, dtype in df.schema.items():
        if name in exempt:
            continue
        tokens = set(re.split(r"[_\W]+", name.lower()))
        if tokens & _PHI_TOKENS or "free_text" in name.lower():
            flagged.append(name)
            continue
        if dtype != pl.String:
            continue
        text = df[name].drop_nulls()
        if text.len() == 0:
            continue
        too_long = (text.str.len_chars() > _FREE_TEXT_CHARS).any()
        wordy = (text.str.count_matches(r"\S+") >= _FREE_TEXT_WORDS).any()
        dated = text.str.contains(_DATE_LIKE).any()
        if too_long or wordy or dated:
            flagged.append(name)
    return flagged


def read_written_tables(layout: DataLayout, collection_id: str) -> ClinicalTables:
    """The tables as `write_outputs` published them (parquet), for checks of what shipped."""
    folder = layout.tables_dir

    def read(name: str) -> pl.DataFrame:
        return pl.read_parquet(folder / f"{name}.parquet")

    return ClinicalTables(
        collection_id=collection_id,
        clinical=read(f"{collection_id}_clinical"),
        laboratory=read(f"{collection_id}_laboratory"),
        table_metadata=read(TABLE_METADATA),
        column_metadata=read(COLUMN_METADATA),
        target=BigQueryTarget.from_env(),
    )


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
    problems = []
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


# --------------------------------------------------------------------------- BigQuery schema


def _schema_field(
    name: str, dtype: pl.DataType | DataTypeClass, description: str | None
) -> dict[str, object]:
    mode = "NULLABLE"
    if isinstance(dtype, pl.List):
        mode, dtype = "REPEATED", dtype.inner
    out: dict[str, object] = {"name": name, "type": bigquery_type(dtype), "mode": mode}
    if isinstance(dtype, pl.Struct):
        out["fields"] = [_schema_field(f.name, f.dtype, None) for f in dtype.fields]
    if description:
        out["description"] = description[:1024]  # BigQuery's limit
    return out


def bigquery_schema(
    schema: pl.Schema, descriptions: Mapping[str, str] | None = None
) -> list[dict[str, object]]:
    """BigQuery's JSON schema for a polars schema: lists are REPEATED, structs RECORD."""
    descriptions = descriptions or {}
    return [_schema_field(n, t, descriptions.get(n)) for n, t in schema.items()]


def _descriptions(tables: ClinicalTables, table: str) -> dict[str, str]:
    if table in _METADATA_DESCRIPTIONS:
        return _METADATA_DESCRIPTIONS[table]
    meta = tables.column_metadata
    rows = meta.filter(meta["table_name"].str.split(".").list.last() == table)
    labels = dict(zip(rows["column"].to_list(), rows["column_label"].to_list(), strict=True))
    # IDC's provenance labels are identifiers, not explanations: describe those columns.
    return {**labels, **_PROVENANCE_DESCRIPTIONS}


# --------------------------------------------------------------------------- writing


def bigquery_dir(layout: DataLayout) -> Path:
    return layout.out / "bigquery"


def load_script_text(tables: Sequence[str], target: BigQueryTarget | None = None) -> str:
    """A bash script with one ``bq load`` per table into ``$BMS_BQ_PROJECT:$BMS_BQ_DATASET``.

    With a configured target (default: the environment's) those are the defaults, so a
    plain run loads the tables where column_metadata's table_name says they are; without
    one the script refuses to run until both are set.
    """
    target = target or BigQueryTarget.from_env()
    if target.configured:
        defaults = [
            f"#   {BQ_PROJECT_ENV}  project (default {target.project})",
            f"#   {BQ_DATASET_ENV}  dataset (default {target.dataset})",
            "# table_name in table_metadata/column_metadata names the project and dataset the",
            "# tables were built for; to load elsewhere, rebuild with the same variables set.",
        ]
        project = f'PROJECT="${{{BQ_PROJECT_ENV}:-{target.project}}}"'
        dataset = f'DATASET="${{{BQ_DATASET_ENV}:-{target.dataset}}}"'
    else:
        defaults = [
            f"#   {BQ_PROJECT_ENV}  project (required)",
            f"#   {BQ_DATASET_ENV}  dataset (required)",
            "# The tables were built without a BigQuery target, so table_name holds bare table",
            "# names; rebuild with both variables set to get IDC's <project>.<dataset>.<table>.",
        ]
        project = f'PROJECT="${{{BQ_PROJECT_ENV}:?set {BQ_PROJECT_ENV} to the BigQuery project}}"'
        dataset = f'DATASET="${{{BQ_DATASET_ENV}:?set {BQ_DATASET_ENV} to the BigQuery dataset}}"'
    lines = [
        "#!/usr/bin/env bash",
        "# Load the pipeline's tables into BigQuery, replacing tables of the same name.",
        "# Written by bms_pipeline; every run rewrites it from out/bigquery/*.schema.json.",
        *defaults,
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        'TABLES="${BMS_TABLES_DIR:-$HERE/../tables}"',
        project,
        dataset,
    ]
    for table in tables:
        lines.append(
            "bq load --source_format=PARQUET --parquet_enable_list_inference=true --replace "
            f'"${{PROJECT}}:${{DATASET}}.{table}" "${{TABLES}}/{table}.parquet" '
            f'"${{HERE}}/{table}.schema.json"'
        )
    return "\n".join(lines) + "\n"


def load_script_path(layout: DataLayout) -> Path:
    return bigquery_dir(layout) / "load.sh"


def write_load_script(layout: DataLayout, target: BigQueryTarget | None = None) -> Path:
    """(Re)write out/bigquery/load.sh for every table that has a schema and a parquet file.

    Scanning the folder, rather than listing this module's tables, keeps tables other
    writers add (the DICOM index) in the script; call it while holding the DuckDB lock.
    """
    folder = bigquery_dir(layout)
    suffix = ".schema.json"
    tables = sorted(
        p.name[: -len(suffix)]
        for p in folder.glob(f"*{suffix}")
        if (layout.tables_dir / f"{p.name[: -len(suffix)]}.parquet").is_file()
    )
    path = load_script_path(layout)
    atomic_write_text(path, load_script_text(tables, target), mode=0o755)
    return path


def write_outputs(
    tables: ClinicalTables, layout: DataLayout, *, lock_timeout: float = 600.0
) -> WrittenTables:
    """Write parquet, DuckDB, BigQuery schemas and load.sh, as one locked, atomic update.

    Holding the DuckDB lock for the whole update makes concurrent runs finish one after
    the other, so the parquet files, schemas and database always come from the same run.
    """
    bq = bigquery_dir(layout)
    parquet: dict[str, Path] = {}
    schemas: dict[str, Path] = {}
    with exclusive_lock(duckdb_lock_path(layout.duckdb_path), lock_timeout):
        for name, frame in tables.tables.items():
            parquet[name] = layout.tables_dir / f"{name}.parquet"
            atomic_write_parquet(frame, parquet[name])
            schemas[name] = bq / f"{name}.schema.json"
            schema = bigquery_schema(frame.schema, _descriptions(tables, name))
            atomic_write_text(schemas[name], json.dumps(schema, indent=2) + "\n")
        rebuild_duckdb(layout.duckdb_path, parquet, {CLINICAL_INDEX: CLINICAL_INDEX_SQL})
        load_script = write_load_script(layout, tables.target)
    return WrittenTables(
        parquet=parquet,
        schemas=schemas,
        duckdb=layout.duckdb_path,
        load_script=load_script,
        row_counts={name: frame.height for name, frame in tables.tables.items()},
    )
