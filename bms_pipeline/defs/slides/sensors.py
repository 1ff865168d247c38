"""A sensor that registers new, complete slides as partitions and converts them."""

import json

import dagster as dg

from bms_pipeline.defs.partitions import (
    INVENTORY_KEY,
    SLIDES_PARTITIONS,
    recorded_signature,
    slides_partitions,
)
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.jobs import slides_job

SETTLE_SECONDS = 30.0


def _slide_asset_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetKey]:
    """The partitioned assets a slide run materializes (only the inventory when the sensor
    is evaluated without its definitions)."""
    repository = context.repository_def
    if repository is None:
        return [INVENTORY_KEY]
    graph = repository.asset_graph
    selected = repository.get_job(slides_job.name).asset_layer.selected_asset_keys
    return sorted(
        (k for k in selected if graph.get(k).partitions_def == slides_partitions),
        key=lambda k: k.to_user_string(),
    )


def _slides_in_progress(instance: dg.DagsterInstance) -> set[str]:
    statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    # Any job's run with a slide partition converts that slide (`slides_job`, the CLI's
    # `slide_and_collection_job`, a run launched from an asset's page).
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=statuses))
    return {p for r in records if (p := r.dagster_run.tags.get("dagster/partition"))}


@dg.sensor(
    job=slides_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def new_slides_sensor(
    context: dg.SensorEvaluationContext, bms: BmsPipelineResource
) -> dg.SensorResult:
    """Adds a `slides` partition for every new, complete slide under raw/slides and requests a
    run only for what needs one: a new slide, one whose files changed since its last
    inventory, or one with a slide asset never materialized. What is materialized decides,
    not the cursor (which only tracks files still settling), so starting the UI or the daemon
    on a converted collection launches nothing. Each tick also fails runs whose process died
    and frees their pool slots, so a crash does not block the runs it requests."""
    from bms_pipeline.orchestration.instance import reap_dead_runs

    instance = context.instance
    for run_id in reap_dead_runs(instance):
        context.log.warning("run %s: its process is gone; marked failed, pool slots freed", run_id)
    previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    statuses = bms.scan(SETTLE_SECONDS, previous)
    known = set(instance.get_dynamic_partitions(SLIDES_PARTITIONS))
    ready = [s for s in statuses if s.ready]
    for status in statuses:
        if not status.ready:
            context.log.info("waiting for %s: %s", status.slide_id, status.reason)
    new_keys = [s.slide_id for s in ready if s.slide_id not in known]
    keys = _slide_asset_keys(context)
    materialized = {key: instance.get_materialized_partitions(key) for key in keys}
    busy = _slides_in_progress(instance)
    run_requests = []
    for status in ready:
        sid = status.slide_id
        if sid in known and sid in busy:
            continue  # a run of it is queued or converting; its outcome decides the next tick
        if sid not in known:
            why = "new slide"
        elif (recorded := recorded_signature(instance, sid)) is None:
            why = "never inventoried"
        elif recorded != status.signature:
            why = "files changed since the last inventory"
        elif missing := [k.to_user_string() for k in keys if sid not in materialized[k]]:
            why = f"never materialized: {', '.join(missing)}"
        else:
            continue
        context.log.info("requesting %s: %s", sid, why)
        run_requests.append(
            dg.RunRequest(
                partition_key=sid, run_key=f"{sid}:{status.signature}", tags={"bms/reason": why}
            )
        )
    cursor = {s.slide_id: s.signature for s in statuses}
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[slides_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )
