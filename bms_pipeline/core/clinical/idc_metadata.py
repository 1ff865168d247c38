"""IDC's metadata tables for the clinical data: `table_metadata`, `column_metadata`,
the provenance columns its clinical ETL adds and idc-index's `clinical_index` view.

The schemas and wordings are IDC's; see `tables` for the conventions where they leave room.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from bms_pipeline.core.bigquery import bigquery_type
from bms_pipeline.core.clinical.patients import (
    ClinicalDataError,
)
from bms_pipeline.core.layout import DataLayout

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
PROVENANCE_DESCRIPTIONS = {
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
"""  # noqa: S608 (built from this module's constants)
"""idc-index's clinical_index over column_metadata (short_table_name = last name part)."""

METADATA_DESCRIPTIONS: dict[str, dict[str, str]] = {
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


@dataclass(frozen=True)
class SourceFile:
    path: Path
    relative: str
    md5: str
    size: int
    modified: str


def source_file(layout: DataLayout, path: Path) -> SourceFile:
    digest = hashlib.md5()  # noqa: S324 (IDC's checksum of a source file, not security)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    stat = path.stat()
    try:
        relative = path.resolve().relative_to(layout.root.resolve()).as_posix()
    except ValueError:
        relative = path.name
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    return SourceFile(path, relative, digest.hexdigest(), stat.st_size, modified)


@dataclass(frozen=True)
class ColumnInfo:
    """What column_metadata says about one output column, apart from its values."""

    label: str
    headers: tuple[str, ...]
    numbers: tuple[int, ...]
    source: SourceFile | None
    sheet: str | None = None
    value_descriptions: Mapping[str, str] | None = None
    values_note: str | None = None
    notes: tuple[str, ...] = ()


def provenance_columns(case_header: str) -> dict[str, ColumnInfo]:
    """column_metadata of IDC's provenance columns: the ETL's label, and no source column."""
    derived = (
        f"the source column {case_header!r} (case_col) with surrounding whitespace removed; "
        "equals the DICOM PatientID"
    )
    return {
        DICOM_PATIENT_COLUMN: ColumnInfo(
            PROVENANCE_LABELS[DICOM_PATIENT_COLUMN],
            (PROVENANCE_LABELS[DICOM_PATIENT_COLUMN],),
            (),
            None,
            notes=(derived,),
        ),
        SOURCE_BATCH_COLUMN: ColumnInfo(
            PROVENANCE_LABELS[SOURCE_BATCH_COLUMN],
            (PROVENANCE_LABELS[SOURCE_BATCH_COLUMN],),
            (),
            None,
        ),
    }


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


def column_rows(
    collection_id: str,
    table_name: str,
    frame: pl.DataFrame,
    info: Mapping[str, ColumnInfo],
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


def table_row(
    collection_id: str,
    table_name: str,
    description: str,
    source: SourceFile,
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


def source_file_checked(layout: DataLayout, path: Path, what: str) -> SourceFile:
    if not path.is_file():
        raise ClinicalDataError(f"{path}: {what} does not exist")
    return source_file(layout, path)
