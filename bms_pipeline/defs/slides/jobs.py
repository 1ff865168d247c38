"""The per-slide job: every partitioned asset of one slide, with its checks."""

import dagster as dg

from bms_pipeline.partitions import slides_partitions

SLIDE_GROUPS = ("slides",)

slides_job = dg.define_asset_job(
    name="slides_job",
    selection=dg.AssetSelection.groups(*SLIDE_GROUPS),
    partitions_def=slides_partitions,
    description="Convert and check one slide (one partition).",
)
