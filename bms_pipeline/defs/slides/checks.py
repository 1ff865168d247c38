"""Checks on the SM series that gate everything downstream of it, evaluated in one step."""

from pathlib import Path

import dagster as dg

from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.defs.check_steps import Check, checks_in_one_step
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.assets import sm_series


def sm_series_matches_source(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """Base level equals the OpenSlide bounds, no LABEL, PatientID and ContainerIdentifier set."""
    from bms_pipeline.core.dicom.series_readback import read_series, sm_series_problems
    from bms_pipeline.core.slide_bounds import SlideBounds

    slide_id = context.partition_key
    sm_dir = bms.layout.sm_dir(slide_id)
    with bms.files(slides=[slide_id], require=[sm_dir]) as local:
        expected = SlideBounds.of(openslide_properties(local.mrxs(slide_id))).size
        instances = read_series(sm_dir)
    problems = sm_series_problems(instances, slide_id, expected)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems), "instances": len(instances)},
        description="; ".join(problems) or "series matches its source",
    )


def privacy_scan_result(
    bms: BmsPipelineResource, slide_id: str, folder: Path
) -> dg.AssetCheckResult:
    """The publication gate's byte scan, rerun on what is published under `folder`."""
    from bms_pipeline.core.dicom.idc_conversion import privacy_policy

    with bms.files(slides=[slide_id], read=[folder]) as local:
        policy = privacy_policy(
            bms.collection(), slide_id, openslide_properties(local.mrxs(slide_id))
        )
        files = sorted(folder.rglob("*.dcm"))
    hits = policy.scan(files)
    return dg.AssetCheckResult(
        passed=not hits,
        metadata={
            "files_scanned": len(files),
            "properties_checked": dg.MetadataValue.json(policy.names),
            "carried_on_purpose": dg.MetadataValue.json(list(policy.excused)),
            "hits": dg.MetadataValue.json([hit.describe() for hit in hits]),
        },
        description=(
            f"{len(hits)} hit(s): " + "; ".join(h.describe() for h in hits[:3])
            if hits
            else "no slide identifier or scan date found"
        ),
    )


def sm_series_free_of_slide_identifiers(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """No byte of any SM file holds the MIRAX SLIDE_ID, SLIDE_NAME, another identifying
    MIRAX property or (unless dates are kept) the scan date. The same scan gates
    publication; this shows its verdict on what is published."""
    slide_id = context.partition_key
    return privacy_scan_result(bms, slide_id, bms.layout.sm_dir(slide_id))


def sm_series_thumbnail_matches_pyramid(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """The THUMBNAIL, where there is one, correlates with the pyramid level at or above its
    own resolution (it is the slide, not a copy of a MIRAX preview that covers another
    region). The THUMBNAIL is optional: none (`sm.thumbnail: false`, or left out by the
    publication gate with a warning) passes, and a wrong one only warns (it never
    withholds the slide)."""
    from bms_pipeline.core.dicom.thumbnail import MIN_THUMBNAIL_CORRELATION, thumbnail_similarity

    slide_id = context.partition_key
    sm_dir = bms.layout.sm_dir(slide_id)
    with bms.files(require=[sm_dir]):
        files = sorted(sm_dir.glob("*.dcm"))
    score, compared = thumbnail_similarity(files)
    wanted = bms.collection().conventions.sm.thumbnail
    if score is None:
        description = (
            "no THUMBNAIL: left out by the publication gate (see sm_series warnings)"
            if wanted
            else "no THUMBNAIL, as collection.yaml asks (conventions.sm.thumbnail: false)"
        )
    else:
        description = f"THUMBNAIL correlation {score:.3f} (bound {MIN_THUMBNAIL_CORRELATION})"
    passed = score is None or score >= MIN_THUMBNAIL_CORRELATION
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if passed else dg.AssetCheckSeverity.WARN,
        metadata={
            "correlation": round(score, 4) if score is not None else None,
            "bound": MIN_THUMBNAIL_CORRELATION,
            "compared": compared,
            "thumbnail_wanted": wanted,
            "pictures": thumbnail_check_pictures(files),
        },
        description=description,
    )


def thumbnail_check_pictures(files: list[Path]) -> dg.MetadataValue:
    """The THUMBNAIL and the level it is compared with, as published."""
    from bms_pipeline.core.qc.pictures import thumbnail_check_markdown

    return dg.MetadataValue.md(thumbnail_check_markdown(files))


SM_SERIES_CHECKS = (
    Check(sm_series_matches_source),
    Check(sm_series_free_of_slide_identifiers),
    Check(sm_series_thumbnail_matches_pyramid),
)


sm_series_checks = checks_in_one_step(sm_series, SM_SERIES_CHECKS, slides_partitions)
