"""What BigQuery needs to load a table: its column types, its JSON schema and a `bq load` script.

Shared by the clinical tables and the index tables, so both load the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from polars.datatypes import DataTypeClass

from bms_pipeline.core.atomic_outputs import (
    atomic_write_text,
)
from bms_pipeline.core.layout import DataLayout

BQ_PROJECT_ENV = "BMS_BQ_PROJECT"
BQ_DATASET_ENV = "BMS_BQ_DATASET"


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
    if dtype == pl.String or dtype == pl.Null or dtype == pl.Categorical:
        return "STRING"
    raise TypeError(f"no BigQuery type for polars type {dtype}")


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


def bigquery_dir(layout: DataLayout) -> Path:
    return layout.bigquery_dir


def bigquery_schema_path(layout: DataLayout, table: str) -> Path:
    """The BigQuery schema of a table, beside the load script that lists them all."""
    return bigquery_dir(layout) / f"{table}.schema.json"


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
