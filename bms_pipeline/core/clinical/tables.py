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

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from bms_pipeline.core.atomic_outputs import (
    FOREIGN_WRITER_TIMEOUT,
    atomic_write_parquet,
    atomic_write_text,
    duckdb_lock_path,
    exclusive_lock,
    rebuild_duckdb,
)
from bms_pipeline.core.bigquery import (
    BigQueryTarget,
    bigquery_schema,
    bigquery_schema_path,
    write_load_script,
)
from bms_pipeline.core.clinical.clinical_table import clinical_table
from bms_pipeline.core.clinical.idc_metadata import (
    CLINICAL_INDEX,
    CLINICAL_INDEX_SQL,
    COLUMN_METADATA,
    COLUMN_METADATA_SCHEMA,
    METADATA_DESCRIPTIONS,
    PROVENANCE_DESCRIPTIONS,
    TABLE_METADATA,
    TABLE_METADATA_SCHEMA,
    column_rows,
    source_file_checked,
    table_row,
)
from bms_pipeline.core.clinical.lab_cells import (
    LAB_SHEET,
    LabSheet,
    read_lab_values,
)
from bms_pipeline.core.clinical.laboratory_table import laboratory_table
from bms_pipeline.core.clinical.patients import ClinicalDataError, read_clinical_source
from bms_pipeline.core.clinical.qa import (
    duplicate_patients,
    free_text_findings,
    left_out_summary,
    restrict_to_patients,
)
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.layout import DataLayout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClinicalTables:
    """Everything `build_clinical_tables` made, ready for `write_outputs` and the checks."""

    collection_id: str
    clinical: pl.DataFrame
    laboratory: pl.DataFrame
    table_metadata: pl.DataFrame
    column_metadata: pl.DataFrame
    target: BigQueryTarget
    warnings: list[str] = field(default_factory=list[str])
    lab: LabSheet | None = None
    left_out: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    """Patient ids left out of each table because they have no converted slide."""
    columns_left_out: list[str] = field(default_factory=list[str])
    """Source columns the collection does not define, by file and position (never values)."""

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
    clinical_source = source_file_checked(layout, layout.clinical_csv, "clinical.csv")
    lab_source = source_file_checked(layout, layout.lab_values_xlsx, "lab_values.xlsx")

    source = read_clinical_source(layout.clinical_csv)
    clinical, clinical_info = clinical_table(clinical_source, source)
    lab = read_lab_values(layout.lab_values_xlsx, strict=strict)
    laboratory, lab_info = laboratory_table(lab, lab_source)
    warnings = [*source.warnings, *lab.warnings]
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
    # First, so that the run's summary (which shows the first warnings) always names them.
    warnings[:0] = left_out_summary(left_out)
    free_text = [
        f"{name}: {finding}"
        for name, frame in ((f"{cid}_clinical", clinical), (f"{cid}_laboratory", laboratory))
        for finding in free_text_findings(frame)
    ]
    if free_text:
        raise ClinicalDataError(
            "the clinical tables are not written: they would publish what may be free text "
            "identifying a person:\n  " + "\n  ".join(free_text)
        )

    clinical_name, laboratory_name = f"{cid}_clinical", f"{cid}_laboratory"
    added = str(added_at or datetime.now(UTC))
    table_metadata = pl.DataFrame(
        [
            table_row(
                cid,
                target.qualified(clinical_name),
                "Per patient age, sex and leukemia diagnosis (NCIt) from clinical.csv, with "
                "the DICOM PatientSex and PatientAge derived from them",
                clinical_source,
                added,
                idc_version,
            ),
            table_row(
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
        column_rows(cid, target.qualified(clinical_name), clinical, clinical_info)
        + column_rows(cid, target.qualified(laboratory_name), laboratory, lab_info),
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
        columns_left_out=[
            *(f"{layout.clinical_csv.name}: {f.describe()}" for f in source.left_out),
            *(f"{layout.lab_values_xlsx.name}: {c.describe()}" for c in lab.left_out_columns),
        ],
    )


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


def _descriptions(tables: ClinicalTables, table: str) -> dict[str, str]:
    if table in METADATA_DESCRIPTIONS:
        return METADATA_DESCRIPTIONS[table]
    meta = tables.column_metadata
    rows = meta.filter(meta["table_name"].str.split(".").list.last() == table)
    labels = dict(zip(rows["column"].to_list(), rows["column_label"].to_list(), strict=True))
    # IDC's provenance labels are identifiers, not explanations: describe those columns.
    return {**labels, **PROVENANCE_DESCRIPTIONS}


def write_outputs(
    tables: ClinicalTables,
    layout: DataLayout,
    *,
    lock_timeout: float = 600.0,
    writer_timeout: float = FOREIGN_WRITER_TIMEOUT,
) -> WrittenTables:
    """Write parquet, DuckDB, BigQuery schemas and load.sh, as one locked, atomic update.

    Holding the DuckDB lock for the whole update makes concurrent runs finish one after
    the other, so the parquet files, schemas and database always come from the same run.
    """
    parquet: dict[str, Path] = {}
    schemas: dict[str, Path] = {}
    with exclusive_lock(duckdb_lock_path(layout.duckdb_path), lock_timeout):
        for name, frame in tables.tables.items():
            parquet[name] = layout.table_parquet(name)
            atomic_write_parquet(frame, parquet[name])
            schemas[name] = bigquery_schema_path(layout, name)
            schema = bigquery_schema(frame.schema, _descriptions(tables, name))
            atomic_write_text(schemas[name], json.dumps(schema, indent=2) + "\n")
        rebuild_duckdb(
            layout.duckdb_path, parquet, {CLINICAL_INDEX: CLINICAL_INDEX_SQL}, writer_timeout
        )
        load_script = write_load_script(layout, tables.target)
    return WrittenTables(
        parquet=parquet,
        schemas=schemas,
        duckdb=layout.duckdb_path,
        load_script=load_script,
        row_counts={name: frame.height for name, frame in tables.tables.items()},
    )
