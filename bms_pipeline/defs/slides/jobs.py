"""The per-slide job: every partitioned asset of one slide, with its checks."""

import dagster as dg

SLIDE_GROUPS = ("slides",)

slides_job = dg.define_asset_job(
    name="slides_job",
    selection=dg.AssetSelection.groups(*SLIDE_GROUPS),
    description="Convert and check one slide (one partition).",
)

COLLECTION_GROUPS = ("reports", "tables")

collection_job = dg.define_asset_job(
    name="collection_job",
    selection=dg.AssetSelection.groups(*COLLECTION_GROUPS),
    description="Collection-wide tables and reports over every slide.",
)
