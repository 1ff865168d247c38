"""Collection-wide tables: clinical and lab data the IDC way, and an idc-index-like index."""

import dagster as dg

from bms_pipeline.defs.annotations.assets import ann_series
from bms_pipeline.defs.automation import IDEMPOTENT_RETRY
from bms_pipeline.defs.facts import collection_asset_version, version_metadata
from bms_pipeline.defs.metadata import column_schema, markdown_table
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.assets import sm_series


@dg.asset(
    group_name="tables",
    kinds={"polars", "duckdb", "parquet", "bigquery"},
    deps=[sm_series],
    code_version="1",
    retry_policy=IDEMPOTENT_RETRY,
)
def clinical_tables(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """`<collection>_clinical` and `<collection>_laboratory` with IDC's `table_metadata` and
    `column_metadata`, as parquet, DuckDB tables (plus the `clinical_index` view) and BigQuery
    schemas with a load script. Censored lab values keep their source string, with typed
    `_value` and `_qualifier` companions. Only patients with a published SM series are in
    the tables (unless `keep_patients_without_dicom`); the others are listed as left out.
    Only the columns the collection defines are published (clinical.csv's contract, the
    lab sheet's `idc_dictionary`); others are named by position in `columns_left_out`."""
    from bms_pipeline.core.bigquery import bigquery_dir
    from bms_pipeline.core.clinical.tables import build_clinical_tables, write_outputs

    layout = bms.layout
    collection = bms.collection()
    # The load script lists every table with a schema and parquet file, other writers' too.
    with bms.files(
        require=[layout.clinical_dir],
        read=[layout.duckdb_path, layout.tables_dir, bigquery_dir(layout)],
    ) as local:
        version = collection_asset_version(context, bms)
        tables = build_clinical_tables(
            layout, collection, converted_patients=bms.published_patients()
        )
        for warning in tables.warnings:  # the patients left out first; never a cell's content
            context.log.warning(warning)
        written = write_outputs(tables, layout)
        local.wrote(
            *written.parquet.values(),
            *written.schemas.values(),
            written.load_script,
            written.duckdb,
        )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(str(layout.tables_dir)),
            "duckdb": dg.MetadataValue.path(str(written.duckdb)),
            "load_script": dg.MetadataValue.path(str(written.load_script)),
            "row_counts": dg.MetadataValue.json(written.row_counts),
            "warnings": len(tables.warnings),
            "warning_examples": dg.MetadataValue.json(tables.warnings[:20]),
            "patients_left_out": dg.MetadataValue.json(tables.left_out),
            "columns_left_out": dg.MetadataValue.json(tables.columns_left_out),
            "dagster/row_count": tables.clinical.height,
            "dagster/column_schema": column_schema(tables.clinical),
            "laboratory_schema": column_schema(tables.laboratory),
            "clinical_preview": markdown_table(tables.clinical.head(10)),
        },
    )


@dg.asset(
    group_name="tables",
    kinds={"dicom", "duckdb", "parquet"},
    deps=[sm_series, ann_series],
    code_version="2",
    retry_policy=IDEMPOTENT_RETRY,
)
def dicom_index(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """idc-index's tables (`index`, `sm_index`, `sm_instance_index`, `ann_index`,
    `ann_group_index`, with exactly idc-index-data's columns) read from the headers of every
    file under out/dicom, and ours beside them (`bms_instance_paths`: file paths relative
    to the output root; `bms_sm_tiles`; `bms_ann_references`)."""
    import polars as pl

    from bms_pipeline.core.bigquery import bigquery_dir, bigquery_schema_path, load_script_path
    from bms_pipeline.core.index import build_dicom_index
    from bms_pipeline.core.index.write import write_dicom_index

    layout = bms.layout
    collection = bms.collection()
    version = collection_asset_version(context, bms)
    with bms.files(
        read=[layout.dicom_dir, layout.duckdb_path, layout.tables_dir, bigquery_dir(layout)]
    ) as local:
        index = build_dicom_index(
            layout.dicom_dir, collection.collection_id, collection.doi, collection.license
        )
        paths = write_dicom_index(index, layout)
        local.wrote(
            *paths.values(),
            *(bigquery_schema_path(layout, name) for name in paths),
            load_script_path(layout),
            layout.duckdb_path,
        )
    counts = {name: frame.height for name, frame in index.tables().items()}
    context.log.info("dicom index: %s", counts)
    by_label = (
        index.ann_group_index.group_by("AnnotationGroupLabel")
        .agg(pl.col("NumberOfAnnotations").sum())
        .sort("NumberOfAnnotations", descending=True)
        .head(15)
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(str(paths["index"].parent)),
            "row_counts": dg.MetadataValue.json(counts),
            "dagster/row_count": index.index.height,
            "dagster/column_schema": column_schema(index.index),
            "series": markdown_table(
                index.index.select(
                    "PatientID", "SeriesNumber", "Modality", "SeriesDescription", "instanceCount"
                )
            ),
            "annotations_by_label": markdown_table(by_label),
        },
    )


@dg.asset(
    group_name="tables",
    kinds={"duckdb", "parquet"},
    deps=[dicom_index, clinical_tables],
    code_version="1",
    retry_policy=IDEMPOTENT_RETRY,
)
def releases(context: dg.AssetExecutionContext, bms: BmsPipelineResource) -> dg.MaterializeResult:
    """Numbered releases, the IDC way: a run that changes what is published (a series added,
    revised under new UIDs or withdrawn, or a clinical table changed) records release n+1
    in out/releases/ledger.json; `bms_releases`, `bms_series_releases` (first and last
    release of every published series) and `bms_prior_versions_index` (idc-index-data's
    columns where they apply) are made from it."""
    import datetime as dt

    import polars as pl

    from bms_pipeline.core.annotations.ann import converter_commit
    from bms_pipeline.core.atomic_outputs import (
        atomic_write_parquet,
        atomic_write_text,
        write_duckdb_tables,
    )
    from bms_pipeline.core.releases import (
        Ledger,
        published_series,
        record_release,
        release_tables,
    )
    from bms_pipeline.core.versions import file_digest

    layout = bms.layout
    collection = bms.collection()
    version = collection_asset_version(context, bms)
    ledger_path = layout.releases_ledger
    with bms.files(read=[layout.tables_dir, ledger_path.parent, layout.duckdb_path]) as local:
        ledger = Ledger.load(ledger_path)
        index, paths = layout.table_parquet("index"), layout.table_parquet("bms_instance_paths")
        series = (
            published_series(pl.read_parquet(index), pl.read_parquet(paths))
            if index.is_file() and paths.is_file()
            else []
        )
        clinical = {
            name: file_digest(layout.table_parquet(f"{collection.collection_id}_{name}"))
            for name in ("clinical", "laboratory")
        }
        updated = record_release(
            ledger,
            series,
            {f"{collection.collection_id}_{n}": d for n, d in clinical.items()},
            code_version=converter_commit(),
            date=dt.datetime.now(dt.UTC).date().isoformat(),
        )
        if updated is not ledger:
            atomic_write_text(ledger_path, updated.to_json() + "\n")
            local.wrote(ledger_path)
            latest = updated.releases[-1]
            context.log.info(
                "release %d: %d added, %d revised, %d removed, tables changed: %s",
                latest.number,
                latest.added,
                latest.revised,
                latest.removed,
                ", ".join(latest.tables_changed) or "none",
            )
        frames = release_tables(updated, collection.collection_id)
        written = {}
        for name, frame in frames.items():
            written[name] = layout.table_parquet(name)
            atomic_write_parquet(frame, written[name])
        write_duckdb_tables(layout.duckdb_path, written)
        local.wrote(*written.values(), layout.duckdb_path)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "release": updated.last,
            "new_release": updated is not ledger,
            "series": len(updated.current),
            "prior_versions": len(updated.prior),
            "releases": markdown_table(frames["bms_releases"], "no release yet"),
            "path": dg.MetadataValue.path(str(ledger_path)),
        },
    )
