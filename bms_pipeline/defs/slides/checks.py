"""Checks on the SM series that gate everything downstream of it."""


import dagster as dg

from bms_pipeline.core.layout import patient_id_of
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.defs.slides.assets import sm_series
from bms_pipeline.partitions import slides_partitions
from bms_pipeline.resources import BmsPipelineResource


@dg.asset_check(asset=sm_series, blocking=True, partitions_def=slides_partitions)
def sm_series_matches_source(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """Base level equals the OpenSlide bounds, no LABEL, PatientID and ContainerIdentifier set."""
    from bms_pipeline.core.dicom.series import read_series, volume_levels

    slide_id = context.partition_key
    layout = bms.layout
    props = openslide_properties(bms.stage_slide(slide_id))
    expected = (
        int(props.get("openslide.bounds-width", props["openslide.level[0].width"])),
        int(props.get("openslide.bounds-height", props["openslide.level[0].height"])),
    )
    instances = read_series(bms.fetch(layout.sm_dir(slide_id), required=True))
    levels = volume_levels(instances)
    problems: list[str] = []
    if not levels:
        problems.append("no VOLUME instance")
    elif (levels[0].columns, levels[0].rows) != expected:
        problems.append(f"base level {levels[0].columns}x{levels[0].rows} != bounds {expected}")
    if any(i.flavor == "LABEL" for i in instances):
        problems.append("a LABEL instance was written")
    patient_id = patient_id_of(slide_id)
    if {i.patient_id for i in instances} != {patient_id}:
        problems.append("PatientID differs from the slide's patient id")
    if {i.container_identifier for i in instances} != {slide_id}:
        problems.append("ContainerIdentifier differs from the slide id")
    if len({i.series_instance_uid for i in instances}) != 1:
        problems.append("instances belong to more than one series")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems), "instances": len(instances)},
        description="; ".join(problems) or "series matches its source",
    )


@dg.asset_check(asset=sm_series, blocking=True, partitions_def=slides_partitions)
def sm_series_free_of_slide_identifiers(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """No byte of any output file of the slide holds its MIRAX SLIDE_ID, SLIDE_NAME or any
    other identifying-looking MIRAX property outside the allow-list."""
    from bms_pipeline.core.dicom.phi import identifiers_of, scan_files

    slide_id = context.partition_key
    layout = bms.layout
    identifiers = identifiers_of(openslide_properties(bms.stage_slide(slide_id)))
    files = sorted(bms.fetch(layout.slide_dicom_dir(slide_id)).rglob("*.dcm"))
    hits = scan_files(files, identifiers)
    return dg.AssetCheckResult(
        passed=not hits,
        metadata={
            "files_scanned": len(files),
            "identifiers_checked": dg.MetadataValue.json(sorted(identifiers)),
            "hits": dg.MetadataValue.json(
                [{"file": h.file.name, "identifier": h.name, "offset": h.offset} for h in hits]
            ),
        },
        description=(
            f"{len(hits)} file(s) hold a slide identifier" if hits else "no slide identifier found"
        ),
    )
