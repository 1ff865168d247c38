"""`dicomweb_series`: a slide's SM and ANN on the configured DICOMweb server.

Present only when a server is configured (`--dicomweb-url`, `$BMS_DICOMWEB_URL`, or
`dicomweb.url` in collection.yaml): with none, nothing is published and nothing claims to be,
so the asset is left out of the graph rather than materialized as an empty success. The server's
URL is part of the code version, so naming another server makes every slide stale and the next
`run` publishes there as well.
"""

import dagster as dg

from bms_pipeline.core.dicomweb.config import DicomwebTarget
from bms_pipeline.defs.facts import slide_asset_version, version_metadata
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.validation.assets import dicom_validation

CODE_VERSION = "1"


def build_dicomweb_asset(target: DicomwebTarget) -> dg.AssetsDefinition:
    @dg.asset(
        name="dicomweb_series",
        partitions_def=slides_partitions,
        group_name="slides",
        kinds={"dicomweb"},
        deps=[dicom_validation],
        code_version=f"{CODE_VERSION}-{target.fingerprint}",
        description=(
            f"STOW-RS of the slide's SM and ANN instances to {target.url} (from {target.source}), "
            "only after every blocking check passed; idempotent (what the server holds equal is "
            "not sent again, a changed instance replaces the old one) and verified by QIDO-RS "
            "(every instance listed) and WADO-RS (frame 1 of each image, each annotation object, "
            "equal to the files)."
        ),
    )
    def dicomweb_series(
        context: dg.AssetExecutionContext, bms: BmsPipelineResource
    ) -> dg.MaterializeResult:
        from bms_pipeline.core.dicomweb.publish import (
            ensure_publishable,
            publish_slide,
            slide_instances,
        )

        slide_id = context.partition_key
        layout = bms.layout
        version = slide_asset_version(context, bms)
        with bms.files(require=[layout.validation_parquet(slide_id)]):
            ensure_publishable(layout, slide_id)  # never what failed validation
        with bms.files(require=[layout.sm_dir(slide_id)], read=[layout.ann_dir(slide_id)]):
            instances = slide_instances(layout.sm_dir(slide_id), layout.ann_dir(slide_id))
        context.log.info(
            "publishing %d instances of %s to %s", len(instances), slide_id, target.url
        )
        report = publish_slide(instances, target.url, credentials=target.credentials)
        if report.replaced:
            context.log.warning(
                "%s: %d instance(s) on %s had other content under the same UIDs and were replaced",
                slide_id,
                len(report.replaced),
                target.url,
            )
        if report.left_on_server:
            context.log.warning(
                "%s: %d instance(s) of these series on %s are no longer ours and were left there: %s",
                slide_id,
                len(report.left_on_server),
                target.url,
                ", ".join(report.left_on_server),
            )
        superseded = superseded_series(context, report.series)
        if superseded:
            context.log.warning(
                "%s: %d series published earlier on %s were superseded by new versions (new "
                "UIDs) or withdrawn; listed for retraction: %s",
                slide_id,
                len(superseded),
                target.url,
                ", ".join(superseded),
            )
        state = (
            "replaced changed series"
            if report.replaced
            else "stored"
            if report.stored
            else "already on the server"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version.digest),
            metadata={
                **version_metadata(version),
                "server": dg.MetadataValue.url(target.url),
                "configured_by": target.source,
                "authentication": report.auth,
                "state": state,
                "instances": report.instances,
                "instances_stored": len(report.stored),
                "instances_replaced": len(report.replaced),
                "instances_unchanged": len(report.unchanged),
                "instances_left_on_server": len(report.left_on_server),
                "bytes_sent": report.bytes_sent,
                "seconds": report.seconds,
                "verified_frames": report.verified_frames,
                "verified_annotation_objects": report.verified_objects,
                "series": dg.MetadataValue.json(report.series),
                "replaced_sop_instance_uids": dg.MetadataValue.json(report.replaced),
                "superseded_series": dg.MetadataValue.json(superseded),
            },
        )

    return dicomweb_series


def superseded_series(context: dg.AssetExecutionContext, now: dict[str, int]) -> list[str]:
    """Series UIDs this slide had on the server at its previous publication and has no more
    (a changed series is published under new UIDs, so its old version stays there): listed
    for retraction, with those of earlier publications not yet retracted."""
    from bms_pipeline.defs.facts import latest_metadata

    previous = latest_metadata(context.instance, context.asset_key, context.partition_key) or {}
    before = set(previous.get("series") or {}) | set(previous.get("superseded_series") or [])
    return sorted(before - set(now))


def dicomweb_assets(data_root: str) -> list[dg.AssetsDefinition]:
    """The asset for the configured server, or none (see module docstring)."""
    from pathlib import Path

    from bms_pipeline.core.dicomweb.config import resolve_target
    from bms_pipeline.core.layout import DataLayout

    local_yaml = (
        None
        if "://" in data_root and not data_root.startswith("file://")
        else DataLayout(Path(data_root.removeprefix("file://"))).collection_yaml
    )
    target = resolve_target(None, local_yaml)
    return [build_dicomweb_asset(target)] if target else []
