"""The Dagster code location: `dg dev`, `dagster dev` (via workspace.yaml) and the CLI load this.

`defs` is built from the documented environment variables (`$BMS_DATA_ROOT`,
`$BMS_OUTPUT_ROOT`, `$BMS_DICOMWEB_URL`), read here, where Dagster loads the code location;
the command line builds its own with `build_definitions` from its `RunConfig`.
"""

from __future__ import annotations

import os
import warnings
from types import EllipsisType
from typing import TYPE_CHECKING

import dagster as dg

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV
from bms_pipeline.defs.annotations import assets as annotation_assets
from bms_pipeline.defs.annotations import checks as annotation_checks
from bms_pipeline.defs.automation import nightly_backfills
from bms_pipeline.defs.dicomweb.assets import build_dicomweb_asset, dicomweb_assets
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides import assets as slide_assets
from bms_pipeline.defs.slides import checks as slide_checks
from bms_pipeline.defs.slides.jobs import collection_job, slides_job
from bms_pipeline.defs.slides.sensors import new_slides_sensor
from bms_pipeline.defs.tables import assets as table_assets
from bms_pipeline.defs.tables import checks as table_checks
from bms_pipeline.defs.validation import assets as validation_assets
from bms_pipeline.defs.validation import checks as validation_checks
from bms_pipeline.orchestration.workers import select_executor

if TYPE_CHECKING:
    from bms_pipeline.core.dicomweb.config import DicomwebTarget


def build_definitions(
    data_root: str | None = None,
    workers: int | None = None,
    output_root: str | None = None,
    dicomweb: DicomwebTarget | None | EllipsisType = ...,
) -> dg.Definitions:
    """The definitions over `data_root` and `output_root` (default: their environment
    variables, then ./data and <data root>/out). `dicomweb` is the publication target
    resolved by the caller (None: publish nowhere); left out (`...`), it is resolved here
    from `$BMS_DICOMWEB_URL` or collection.yaml."""
    data_root = data_root or os.environ.get(DATA_ROOT_ENV) or "data"
    if output_root is None:
        output_root = os.environ.get(OUTPUT_ROOT_ENV) or None
    if isinstance(dicomweb, EllipsisType):
        publish = dicomweb_assets(data_root)  # only when a DICOMweb server is configured
    else:
        publish = [build_dicomweb_asset(dicomweb)] if dicomweb is not None else []
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(
                [slide_assets, annotation_assets, validation_assets, table_assets]
            ),
            *publish,
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
