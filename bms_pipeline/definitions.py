"""The Dagster code location: `dagster dev` (via workspace.yaml) and the CLI load this."""

from __future__ import annotations

import warnings

import dagster as dg

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from bms_pipeline.defs.annotations import assets as annotation_assets
from bms_pipeline.defs.annotations import checks as annotation_checks
from bms_pipeline.defs.automation import nightly_backfills
from bms_pipeline.defs.dicomweb.assets import dicomweb_assets
from bms_pipeline.defs.resources import BmsPipelineResource, default_data_root
from bms_pipeline.defs.slides import assets as slide_assets
from bms_pipeline.defs.slides import checks as slide_checks
from bms_pipeline.defs.slides.jobs import collection_job, slides_job
from bms_pipeline.defs.slides.sensors import new_slides_sensor
from bms_pipeline.defs.tables import assets as table_assets
from bms_pipeline.defs.tables import checks as table_checks
from bms_pipeline.defs.validation import assets as validation_assets
from bms_pipeline.defs.validation import checks as validation_checks
from bms_pipeline.orchestration.workers import select_executor


def build_definitions(
    data_root: str | None = None, workers: int | None = None, output_root: str | None = None
) -> dg.Definitions:
    data_root = data_root or default_data_root()
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(
                [slide_assets, annotation_assets, validation_assets, table_assets]
            ),
            *dicomweb_assets(data_root),  # only when a DICOMweb server is configured
        ],
        asset_checks=dg.load_asset_checks_from_modules(
            [slide_checks, annotation_checks, validation_checks, table_checks]
        ),
        jobs=[slides_job, collection_job],
        # A slide's steps run one after the other anyway, and each step process would pay
        # 4-6 s of imports (Dagster, wsidicomizer, highdicom, polars): runs execute in one
        # process, and parallelism comes from concurrent runs (one per slide), capped by
        # the run queue and the `wsi_conversion` pool in dagster.yaml.
        # BMS_EXECUTOR=celery sends launched runs' steps to workers (bms_pipeline.orchestration.workers).
        executor=select_executor(),
        sensors=[new_slides_sensor],
        schedules=[nightly_backfills],
        resources={
            "bms": BmsPipelineResource(
                data_root=data_root, output_root=output_root, workers=workers
            )
        },
    )


defs = build_definitions()
