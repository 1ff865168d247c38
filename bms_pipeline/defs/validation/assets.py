"""Conformance as data: dicom3tools messages per slide, a report over all slides, and the
collection page to look at."""

from typing import TYPE_CHECKING

import dagster as dg

from bms_pipeline.defs.annotations.assets import ann_series
from bms_pipeline.defs.automation import IDEMPOTENT_RETRY
from bms_pipeline.defs.facts import collection_asset_version, slide_asset_version, version_metadata
from bms_pipeline.defs.metadata import column_schema, markdown_table
from bms_pipeline.defs.partitions import SLIDES_PARTITIONS, slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.assets import sm_series
from bms_pipeline.defs.tables.assets import clinical_tables, dicom_index

if TYPE_CHECKING:
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.core.qc.page import NotPublished


@dg.asset(
    partitions_def=slides_partitions,
    group_name="slides",
    kinds={"dicom3tools", "parquet"},
    deps=[sm_series, ann_series],
    code_version="1",
    retry_policy=IDEMPOTENT_RETRY,
)
def dicom_validation(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """`dciodvfy -new` on every DICOM file of the slide and `dcentvfy` on each series and on the
    patient's study; every message is a row of `out/validation/<slide_id>.parquet`."""
    from bms_pipeline.core.atomic_outputs import atomic_write_parquet
    from bms_pipeline.core.validation.report import summarize
    from bms_pipeline.core.validation.slide import slide_series_files, validate_slide

    slide_id = context.partition_key
    layout = bms.layout
    version = slide_asset_version(context, bms)
    path = layout.validation_parquet(slide_id)
    # dcentvfy checks the patient's whole study: every slide's series are read.
    with bms.files(read=[layout.dicom_dir], write=[path]):
        series = slide_series_files(layout, slide_id)
        context.log.info(
            "validating %d files in %d series of %s",
            sum(map(len, series.values())),
            len(series),
            slide_id,
        )
        frame = validate_slide(layout, slide_id)
        atomic_write_parquet(frame, path)
    summary = summarize(frame)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(bms.url_of(path)),
            "files": sum(map(len, series.values())),
            "series": len(series),
            "errors": summary.errors,
            "warnings": summary.warnings,
            "unexplained_warnings": summary.unexplained_warnings,
            "dagster/row_count": frame.height,
            "dagster/column_schema": column_schema(frame),
            "messages": markdown_table(summary.by_message, "no messages"),
        },
    )


@dg.asset(
    group_name="reports",
    kinds={"duckdb"},
    deps=[dicom_validation],
    code_version="1",
    retry_policy=IDEMPOTENT_RETRY,
)
def validation_report(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """All slides' validation messages in one table (parquet and the DuckDB table
    `validation_messages`), summarised by level and message."""
    from bms_pipeline.core.atomic_outputs import atomic_write_parquet, write_duckdb_tables
    from bms_pipeline.core.validation.report import (
        combine_slide_results,
        report_summary,
        summarize,
    )

    layout = bms.layout
    version = collection_asset_version(context, bms)
    path = layout.table_parquet("validation_messages")
    with bms.files(
        read=[layout.validation_dir, layout.duckdb_path], write=[path, layout.duckdb_path]
    ):
        files = sorted(layout.validation_dir.glob("*.parquet"))
        if not files:
            # No slide validated yet (none converted): an empty report, not a second failure.
            context.log.info("no slide has validation results yet: writing an empty report")
        frame = combine_slide_results(files)
        atomic_write_parquet(frame, path)
        write_duckdb_tables(layout.duckdb_path, {"validation_messages": path})
    counts = summarize(frame)
    context.log.info("%d slides, %d errors, %d messages", len(files), counts.errors, frame.height)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(str(path)),
            "slides": len(files),
            "errors": counts.errors,
            "warnings": counts.warnings,
            "dagster/row_count": frame.height,
            "dagster/column_schema": column_schema(frame),
            "summary": markdown_table(report_summary(path), "no messages"),
        },
    )


@dg.asset(
    group_name="reports",
    kinds={"html"},
    deps=[validation_report, dicom_index, clinical_tables],
    code_version="1",
    retry_policy=IDEMPOTENT_RETRY,
)
def collection_page(
    context: dg.AssetExecutionContext, bms: BmsPipelineResource
) -> dg.MaterializeResult:
    """`out/qc/index.html`, a static page to look at the whole collection: every published
    slide with its THUMBNAIL (image files beside the page), instances, levels, annotations
    per ANN series and validation counts; the patients left out of the clinical tables; the
    slides not published, with the reason their last run gave."""
    from bms_pipeline.core.qc.page import build_collection_page

    layout = bms.layout
    version = collection_asset_version(context, bms)
    left_out = latest_metadata(context.instance, clinical_tables.key, "patients_left_out")
    with bms.files(
        read=[layout.tables_dir, layout.dicom_dir, layout.qc_dir], write=[layout.qc_dir]
    ):
        page = build_collection_page(
            layout.out,
            bms.collection().collection_name,
            left_out if isinstance(left_out, dict) else {},
            not_published_slides(context.instance, layout),
        )
    for problem in page.missing_thumbnails:
        context.log.warning("collection page: no thumbnail for %s", problem)
    context.log.info(
        "collection page: %d slides, %d thumbnail(s) made, %d reused",
        page.slides,
        page.thumbnails_made,
        page.thumbnails_reused,
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(bms.url_of(page.path)),
            "url": dg.MetadataValue.url(
                page.path.resolve().as_uri() if bms.outputs.is_local else bms.url_of(page.path)
            ),
            "slides": page.slides,
            "thumbnails_made": page.thumbnails_made,
            "thumbnails_reused": page.thumbnails_reused,
            "thumbnail_bytes": page.thumbnail_bytes,
        },
    )


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, name: str) -> object:
    """One metadata value of the asset's latest materialization (None if there is none)."""
    records = instance.fetch_materializations(key, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(name)
    return value.value if value is not None else None


_COLLECTION = ("clinical_tables", "dicom_index", "validation_report", "collection_page")


def not_published_slides(
    instance: dg.DagsterInstance, layout: "DataLayout"
) -> "list[NotPublished]":
    """The registered slides with no published SM series whose latest run failed, each with
    the first line of its failure (the publication gate's reason, an input error...)."""
    from bms_pipeline.core.qc.page import NotPublished

    published = {p.name for p in layout.dicom_dir.glob("*") if layout.sm_dir(p.name).is_dir()}
    out = []
    for slide_id in sorted(instance.get_dynamic_partitions(SLIDES_PARTITIONS)):
        if slide_id in published or not layout.mrxs(slide_id).exists():
            continue
        runs = instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/partition": slide_id}), limit=1
        )
        if not runs or runs[0].dagster_run.status != dg.DagsterRunStatus.FAILURE:
            continue
        reason = "its last run failed"
        for record in instance.all_logs(
            runs[0].dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
        ):
            event = record.dagster_event
            if event is None or event.step_key is None or event.step_key.startswith(_COLLECTION):
                continue  # a collection step of the same run: not the slide's reason
            data = event.step_failure_data
            user = data.user_failure_data
            text = (user.description if user is not None and user.description else None) or (
                data.error.message if data.error is not None else ""
            )
            reason = f"{event.step_key}: {(text.strip().splitlines() or ['failed'])[0]}"
            break
        out.append(NotPublished(slide_id, reason))
    return out
