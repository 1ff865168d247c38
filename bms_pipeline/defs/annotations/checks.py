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
    from bms_pipeline.core.annotations.inputs import read_slide_annotations, slide_bounds
    from bms_pipeline.core.dicom.series import read_series, volume_levels

    slide_id = context.partition_key
    layout = bms.layout
    base = volume_levels(read_series(bms.fetch(layout.sm_dir(slide_id), required=True)))[0]
    bms.fetch(layout.annotations_dir)
    annotations = read_slide_annotations(
        slide_id,
        layout.annotations_dir,
        slide_bounds(openslide_properties(bms.stage_slide(slide_id))),
        (base.columns, base.rows),
    )
    expected = expected_counts(annotations, bms.collection().conventions.ann)
    actual = read_back(bms.fetch(layout.ann_dir(slide_id)))
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
