"""Write the DICOM index tables next to the clinical tables, in the same formats."""

from __future__ import annotations

import json
from pathlib import Path

from bms_pipeline.core.atomic_outputs import (
    atomic_write_parquet,
    atomic_write_text,
    duckdb_lock_path,
    exclusive_lock,
    rebuild_duckdb,
)
from bms_pipeline.core.bigquery import bigquery_schema, bigquery_schema_path, write_load_script
from bms_pipeline.core.index.dicom_index import DicomIndex
from bms_pipeline.core.index.schemas import DESCRIPTIONS
from bms_pipeline.core.layout import DataLayout


def write_dicom_index(index: DicomIndex, layout: DataLayout) -> dict[str, Path]:
    """Parquet, BigQuery schema and DuckDB table for each index table (idc-index's and
    our ``bms_*`` ones), under the DuckDB lock."""
    parquet: dict[str, Path] = {}
    with exclusive_lock(duckdb_lock_path(layout.duckdb_path)):
        for name, frame in index.tables().items():
            parquet[name] = layout.tables_dir / f"{name}.parquet"
            atomic_write_parquet(frame, parquet[name])
            schema = bigquery_schema(frame.schema, DESCRIPTIONS.get(name))
            atomic_write_text(
                bigquery_schema_path(layout, name), json.dumps(schema, indent=2) + "\n"
            )
        rebuild_duckdb(layout.duckdb_path, parquet, {})
        write_load_script(layout)
    return parquet
