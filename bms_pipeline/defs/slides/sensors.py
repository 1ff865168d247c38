"""A sensor that registers new, complete slides as partitions and converts them."""


import json

import dagster as dg

from bms_pipeline.defs.slides.jobs import slides_job
from bms_pipeline.partitions import slides_partitions
from bms_pipeline.resources import BmsPipelineResource

SETTLE_SECONDS = 30.0


@dg.sensor(job=slides_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_slides_sensor(context: dg.SensorEvaluationContext, bms: BmsPipelineResource) -> dg.SensorResult:
    """Adds a `slides` partition for every new, complete slide under raw/slides and requests a
    run for new or changed slides. Slides still being copied wait until their files settle."""
    previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    statuses = bms.scan(SETTLE_SECONDS, previous)
    known = set(context.instance.get_dynamic_partitions(slides_partitions.name))
    ready = [s for s in statuses if s.ready]
    for status in statuses:
        if not status.ready:
            context.log.info("waiting for %s: %s", status.slide_id, status.reason)
    new_keys = [s.slide_id for s in ready if s.slide_id not in known]
    run_requests = [
        dg.RunRequest(partition_key=s.slide_id, run_key=f"{s.slide_id}:{s.signature}")
        for s in ready
        if s.slide_id not in known or previous.get(s.slide_id) != s.signature
    ]
    cursor = {s.slide_id: s.signature for s in statuses}
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[slides_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )
