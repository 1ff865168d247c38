"""Every input row is in the ANN series, exactly once per series it belongs to, and no
identifier is in any of its bytes; evaluated in one step."""

import dagster as dg

from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.defs.annotations.assets import ann_series
from bms_pipeline.defs.check_steps import Check, checks_in_one_step
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource


def ann_counts_match_input(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """Per series and label, the annotations read back with pydicom (not highdicom, which wrote them) equal the input rows."""
    from bms_pipeline.core.annotations.ann import count_problems, expected_counts, read_back
    from bms_pipeline.core.annotations.inputs import read_slide_annotations
    from bms_pipeline.core.dicom.series_readback import read_series, volume_levels
    from bms_pipeline.core.slide_bounds import SlideBounds

    slide_id = context.partition_key
    layout = bms.layout
    with bms.files(
        slides=[slide_id],
        require=[layout.sm_dir(slide_id)],
        read=[layout.annotations_dir, layout.ann_dir(slide_id)],
    ) as local:
        base = volume_levels(read_series(layout.sm_dir(slide_id)))[0]
        annotations = read_slide_annotations(
            slide_id,
            layout.annotations_dir,
            SlideBounds.of(openslide_properties(local.mrxs(slide_id))).offset,
            (base.columns, base.rows),
        )
        actual = read_back(layout.ann_dir(slide_id))
    expected = expected_counts(annotations, bms.collection().conventions.ann)
    problems = count_problems(expected, actual)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "series": len(actual),
            "annotations": sum(sum(labels.values()) for labels in actual.values()),
            "problems": dg.MetadataValue.json(problems[:50]),
        },
        description="; ".join(problems[:5]) or "every input row is encoded",
    )


def ann_series_free_of_slide_identifiers(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """No byte of any ANN file holds a slide identifier or the scan date (the same scan
    gates the ANN series' publication)."""
    from bms_pipeline.defs.slides.checks import privacy_scan_result

    slide_id = context.partition_key
    return privacy_scan_result(bms, slide_id, bms.layout.ann_dir(slide_id))


ANN_SERIES_CHECKS = (Check(ann_counts_match_input), Check(ann_series_free_of_slide_identifiers))


ann_series_checks = checks_in_one_step(ann_series, ANN_SERIES_CHECKS, slides_partitions)
