"""Conformance as data: dicom3tools messages per slide, and a report over all slides."""

import dagster as dg

from bms_pipeline.defs.annotations.assets import ann_series
from bms_pipeline.defs.automation import IDEMPOTENT_RETRY, nightly
from bms_pipeline.defs.metadata import column_schema, markdown_table
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.assets import sm_series


@dg.asset(
    partitions_def=slides_partitions,
    group_name="slides",
    kinds={"dicom3tools", "parquet"},
    deps=[sm_series, ann_series],
    code_version="1",
    automation_condition=nightly,
    retry_policy=IDEMPOTENT_RETRY,
)
def dicom_validation(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """`dciodvfy -new` on every DICOM file of the slide and `dcentvfy` on each series and on the
    patient's study; every message is a row of `out/validation/<slide_id>.parquet`."""
    from bms_pipeline.core.store import atomic_write_parquet
    from bms_pipeline.core.validation.report import summarize
    from bms_pipeline.core.validation.slide import slide_series_files, validate_slide

    slide_id = context.partition_key
    layout = bms.layout
    bms.fetch(layout.out / "dicom")  # dcentvfy checks the patient's whole study
    series = slide_series_files(layout, slide_id)
    context.log.info(
        "validating %d files in %d series of %s",
        sum(map(len, series.values())),
        len(series),
        slide_id,
    )
    frame = validate_slide(layout, slide_id)
    path = layout.validation_parquet(slide_id)
    atomic_write_parquet(frame, path)
    bms.publish(path)
    summary = summarize(frame)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(bms.outputs.url_of(f"validation/{slide_id}.parquet")),
            "files": sum(map(len, series.values())),
            "series": len(series),
            "errors": summary.errors,
            "warnings": summary.warnings,
            "unexplained_warnings": summary.unexplained_warnings,
            "dagster/row_count": frame.height,
            "dagster/column_schema": column_schema(frame),
            "messages": markdown_table(summary.by_message, "no messages"),
        }
    )


@dg.asset(
    group_name="reports",
    kinds={"duckdb"},
    deps=[dicom_validation],
    code_version="1",
    automation_condition=nightly,
    retry_policy=IDEMPOTENT_RETRY,
)
def validation_report(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """All slides' validation messages in one table (parquet and the DuckDB table
    `validation_messages`), summarised by level and message."""
    from bms_pipeline.core.store import atomic_write_parquet, write_duckdb_tables
    from bms_pipeline.core.validation.report import (
        combine_slide_results,
        report_summary,
        summarize,
    )

    layout = bms.layout
    files = sorted(bms.fetch(layout.out / "validation").glob("*.parquet"))
    if not files:
        # No slide validated yet (none converted): an empty report, not a second failure.
        context.log.info("no slide has validation results yet: writing an empty report")
    frame = combine_slide_results(files)
    path = layout.tables_dir / "validation_messages.parquet"
    atomic_write_parquet(frame, path)
    bms.fetch(layout.duckdb_path)
    write_duckdb_tables(layout.duckdb_path, {"validation_messages": path})
    bms.publish(path)
    bms.publish(layout.duckdb_path)
    counts = summarize(frame)
    context.log.info("%d slides, %d errors, %d messages", len(files), counts.errors, frame.height)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "slides": len(files),
            "errors": counts.errors,
            "warnings": counts.warnings,
            "dagster/row_count": frame.height,
            "dagster/column_schema": column_schema(frame),
            "summary": markdown_table(report_summary(path), "no messages"),
        }
    )
