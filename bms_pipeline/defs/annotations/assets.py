"""Per-slide ANN series: the expert cell boxes and the model's nuclei boxes."""

import dagster as dg

from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.defs.facts import mark_refused, slide_asset_version, version_metadata
from bms_pipeline.defs.metadata import markdown_table
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.assets import sm_series


@dg.asset(
    partitions_def=slides_partitions,
    group_name="slides",
    kinds={"dicom", "highdicom"},
    deps=[sm_series],
    code_version="2",
)
def ann_series(context: dg.AssetExecutionContext, bms: BmsPipelineResource) -> dg.MaterializeResult:
    """Microscopy Bulk Simple Annotations (rois, `session_<k>`, consensus, unlabeled, detections)
    as IDC published BMDeep's, built with highdicom from rois.csv, cells.csv and detections.csv, shifted by the slide's bounds and
    referencing the base level of the SM series; written to staging and moved into
    `out/dicom/<slide>/ann/` only if it passes the publication gate (no identifier or scan date
    in any byte, de-identification attributes)."""
    import polars as pl

    from bms_pipeline.core.annotations.ann import base_level_dataset, build_ann_series
    from bms_pipeline.core.annotations.consensus import disagreement_warnings
    from bms_pipeline.core.dicom.idc_conversion import publication_gate
    from bms_pipeline.core.dicom.publication import PublicationRefused
    from bms_pipeline.core.dicom.series_readback import read_series, volume_levels
    from bms_pipeline.core.qc.pictures import annotation_pictures
    from bms_pipeline.core.slide_bounds import SlideBounds

    slide_id = context.partition_key
    layout = bms.layout
    collection = bms.collection()
    version = slide_asset_version(context, bms)
    with bms.files(
        slides=[slide_id],
        require=[layout.sm_dir(slide_id)],
        read=[layout.annotations_dir],
        write=[layout.ann_dir(slide_id)],
    ) as local:
        base = volume_levels(read_series(layout.sm_dir(slide_id)))[0]
        properties = openslide_properties(local.mrxs(slide_id))
        try:
            result = build_ann_series(
                slide_id,
                layout,
                collection.collection_id,
                base_level_dataset(layout.sm_dir(slide_id)),
                bounds=SlideBounds.of(properties).offset,
                image_size=(base.columns, base.rows),
                algorithm_name=collection.detection_algorithm.name,
                algorithm_version=collection.detection_algorithm.version,
                gate=publication_gate(collection, slide_id, properties).ann_problems,
                conventions=collection.conventions.ann,
                numbering=collection.conventions.series_numbers,
            )
        except PublicationRefused as exc:
            # The image was published but its annotations may not be: withdraw the whole
            # slide, so that nothing of it is shared half-checked.
            mark_refused(context)
            bms.withdraw_slide(slide_id)
            raise dg.Failure(
                description=f"{exc}; the slide's published series were withdrawn",
                metadata={"problems": dg.MetadataValue.json([str(p) for p in exc.problems])},
                allow_retries=False,
            ) from None  # the description is the whole story; the summary shows it
    if result.disagreements.height:
        context.log.warning(
            "%s: %d cell(s) whose original_consensus_label differs from the recomputed consensus",
            slide_id,
            result.disagreements.height,
        )
    series = [
        {
            "series": s.name,
            "number": s.series_number,
            "groups": s.group_count,
            "rows": s.rows,
            "bytes": s.bytes,
        }
        for s in result.series
    ]
    pictures = annotation_pictures(sorted(layout.sm_dir(slide_id).glob("*.dcm")), result.ann_dir)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version.digest),
        metadata={
            **version_metadata(version),
            "path": dg.MetadataValue.path(bms.url_of(layout.ann_dir(slide_id))),
            "boxes_on_the_slide": dg.MetadataValue.md(pictures.region),
            "boxes_per_label": dg.MetadataValue.md(pictures.chart),
            "series": markdown_table(pl.DataFrame(series)),
            "series_written": len(result.series),
            "series_skipped": dg.MetadataValue.json(list(result.skipped)),
            "input_rows": dg.MetadataValue.json(result.input_rows),
            "annotations": sum(s.rows for s in result.series),
            "consensus_disagreements": result.disagreements.height,
            # The console summary lists `warning_examples` (and counts `warnings`).
            "warnings": result.disagreements.height,
            "warning_examples": dg.MetadataValue.json(disagreement_warnings(result.disagreements)),
            "disagreement_examples": markdown_table(result.disagreements.head(10)),
            "bytes": result.total_bytes,
            "seconds": round(result.seconds, 3),
        },
    )
