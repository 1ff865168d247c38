"""Per-slide assets: the MIRAX inventory and its DICOM SM series."""

from dataclasses import asdict

import dagster as dg

from bms_pipeline.core.budget import CONVERSION_POOL
from bms_pipeline.core.dicom.phi import shown_properties
from bms_pipeline.core.mirax.inventory import (
    inventory,
    openslide_properties,
    slide_version,
)
from bms_pipeline.core.slide_bounds import SlideBounds
from bms_pipeline.defs.facts import (
    SLIDE_VERSION_METADATA,
    mark_refused,
    slide_asset_version,
    start_inventory,
    version_metadata,
)
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource


@dg.asset(
    partitions_def=slides_partitions,
    group_name="slides",
    kinds={"mirax"},
    code_version="1",
)
def mrxs_slide(context: dg.AssetExecutionContext, bms: BmsPipelineResource) -> dg.MaterializeResult:
    """The raw MIRAX slide: checked complete, hashed file by file, and opened by OpenSlide.

    Its data version is the content hash (with the slide's metadata override files), so a
    changed slide (and only that slide) makes its downstream assets stale.
    """
    from bms_pipeline.core.dicom.overrides import override_paths

    slide_id = context.partition_key
    signature = bms.slide_signature(slide_id)
    start_inventory(context, signature)
    with bms.files(slides=[slide_id]) as local:
        path = local.mrxs(slide_id)
        context.log.info("hashing %s", path)
        inv = inventory(path)
        props = openslide_properties(path)
    overrides = override_paths(bms.layout.root, slide_id)
    url = bms.url_of(bms.layout.mrxs(slide_id))
    version = slide_version(inv.content_hash, overrides)
    shown = shown_properties(props)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(url),
            "content_hash": inv.content_hash,
            "file_signature": signature,
            "override_files": dg.MetadataValue.json([str(p) for p in overrides]),
            "files": len(inv.files),
            "bytes": inv.total_bytes,
            "width": int(props["openslide.level[0].width"]),
            "height": int(props["openslide.level[0].height"]),
            "bounds": dg.MetadataValue.json(asdict(SlideBounds.of(props))),
            "levels": int(props["openslide.level-count"]),
            "inventory": dg.MetadataValue.table(
                records=[
                    dg.TableRecord({"file": f.relative_path, "bytes": f.size, "sha256": f.sha256})
                    for f in inv.files
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("file", "string"),
                        dg.TableColumn("bytes", "int"),
                        dg.TableColumn("sha256", "string"),
                    ]
                ),
            ),
            "openslide_properties": dg.MetadataValue.json(shown),
            SLIDE_VERSION_METADATA: version,
        },
    )


@dg.asset(
    partitions_def=slides_partitions,
    group_name="slides",
    kinds={"dicom", "wsidicomizer"},
    deps=[mrxs_slide],
    code_version="2",
    pool=CONVERSION_POOL,
)
def sm_series(context: dg.AssetExecutionContext, bms: BmsPipelineResource) -> dg.MaterializeResult:
    """The slide as a DICOM VL Whole Slide Microscopy series (all levels, a THUMBNAIL from the
    pyramid, overview, no label), converted by wsidicomizer into staging and moved into
    `out/dicom/<slide>/sm/` only if it passes the publication gate (no identifier or scan date
    in any byte, no LABEL, de-identification attributes, a THUMBNAIL that is the slide).
    A refused slide is withdrawn from out/dicom entirely, and fails again on every rerun
    until its inputs, override files or the code change."""
    from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
    from bms_pipeline.core.dicom.overrides import load_overrides
    from bms_pipeline.core.dicom.publication import PublicationRefused
    from bms_pipeline.core.dicom.series_readback import read_series, volume_levels
    from bms_pipeline.core.qc.pictures import thumbnail_markdown

    slide_id = context.partition_key
    layout = bms.layout
    with bms.files(
        slides=[slide_id], require=[layout.clinical_csv], write=[layout.sm_dir(slide_id)]
    ):
        version = slide_asset_version(context, bms)
        context.log.info("converting %s with wsidicomizer", slide_id)
        try:
            result = convert_layout_slide(
                layout,
                bms.collection(),
                slide_id,
                bms.conversion_settings(),
                content_key=version.digest,
                frame_key=version.parts["slide files"],
            )
        except PublicationRefused as exc:
            mark_refused(context)
            withdrawn = bms.withdraw_slide(slide_id)
            raise dg.Failure(
                description=str(exc)
                + ("; the earlier published series were withdrawn" if withdrawn else ""),
                metadata={"problems": dg.MetadataValue.json([str(p) for p in exc.problems])},
                allow_retries=False,
            ) from None  # the description is the whole story; the summary shows it
        instances = read_series(result.sm_dir)
    levels = volume_levels(instances)
    context.log.info(
        "%s: %d instances, %d levels, %.1f MP/s",
        slide_id,
        len(instances),
        len(levels),
        result.megapixels_per_second,
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(bms.url_of(layout.sm_dir(slide_id))),
            "thumbnail": dg.MetadataValue.md(
                thumbnail_markdown(sorted(result.sm_dir.glob("*.dcm")))
            ),
            "instances": len(instances),
            "levels": len(levels),
            "level_sizes": dg.MetadataValue.json([[i.columns, i.rows] for i in levels]),
            "image_types": dg.MetadataValue.json(sorted({i.flavor for i in instances})),
            "bytes": result.total_bytes,
            "seconds": round(result.seconds, 3),
            "base_megapixels": round(result.base_megapixels, 3),
            "megapixels_per_second": round(result.megapixels_per_second, 2),
            "series_instance_uid": instances[0].series_instance_uid,
            "metadata_overrides": dg.MetadataValue.json(
                [o.summary() for o in load_overrides(layout.root, slide_id)]
            ),
            "study_instance_uid": instances[0].study_instance_uid,
            "readers": dg.MetadataValue.json([r.summary() for r in result.readers]),
            "openslide_handle": dg.MetadataValue.json(
                result.openslide_handle or {"kept_open": True}
            ),
            "warnings": len(result.warnings),
            "warning_examples": dg.MetadataValue.json(list(result.warnings)),
        },
    )
