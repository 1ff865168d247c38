"""The sensor that keeps the published collection following its inputs under the daemon."""

import json

import dagster as dg

from bms_pipeline.core.run_decision import INVENTORY_ASSET
from bms_pipeline.defs.facts import pending_withdrawals, plan_collection, plan_slides
from bms_pipeline.defs.partitions import SLIDES_PARTITIONS, slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.jobs import collection_job, slides_job

SETTLE_SECONDS = 30.0
_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _code_versions(context: dg.SensorEvaluationContext, job: str) -> dict[str, str]:
    """Asset -> code version of the assets `job` materializes, in graph order."""
    repository = context.repository_def
    if repository is None:
        return {}
    graph = repository.asset_graph
    selected = repository.get_job(job).asset_layer.selected_asset_keys
    return {
        key.to_user_string(): str(graph.get(key).code_version or "")
        for key in graph.toposorted_asset_keys
        if key in selected
    }


def _runs_in_progress(instance: dg.DagsterInstance) -> tuple[set[str], bool]:
    """(slides being converted, whether a collection run is under way)."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=_IN_PROGRESS))
    slides = {p for r in records if (p := r.dagster_run.tags.get("dagster/partition"))}
    collection = any(r.dagster_run.job_name == collection_job.name for r in records)
    return slides, collection


@dg.sensor(
    jobs=[slides_job, collection_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_slides_sensor(
    context: dg.SensorEvaluationContext, bms: BmsPipelineResource
) -> dg.SensorResult:
    """Follows raw/slides, the annotation and clinical files and collection.yaml with the same
    decision as `run` and `status` (`core.run_decision`): registers each new, complete slide
    as a partition; requests a run of exactly the assets whose inputs changed; never requests
    a slide that rests as refused or failed until its inputs change; withdraws the slides
    that are no longer inputs; then rebuilds the collection tables once no slide is busy.
    Each request carries the versions it is for, so the same inputs are never requested
    twice. Each tick also fails runs whose process died and frees their pool slots."""
    from bms_pipeline.defs.runs import reap_dead_runs

    instance = context.instance
    for run_id in reap_dead_runs(instance):
        context.log.warning("run %s: its process is gone; marked failed, pool slots freed", run_id)
    previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    statuses = bms.scan(SETTLE_SECONDS, previous)
    known = set(instance.get_dynamic_partitions(SLIDES_PARTITIONS))
    busy, collection_busy = _runs_in_progress(instance)
    versions = _code_versions(context, slides_job.name) or {INVENTORY_ASSET: ""}
    run_requests = []
    new_keys = []
    for status, decision in plan_slides(instance, bms, versions, statuses=statuses):
        sid = status.slide_id
        if decision.state in ("not-ready", "skipped", "refused", "failed"):
            if decision.reason:
                context.log.info("%s: %s: %s", sid, decision.state, decision.reason)
            continue
        if sid not in known:
            new_keys.append(sid)
        if not decision.needs_run or sid in busy:
            continue  # up to date, or a run of it is queued or converting
        context.log.info("requesting %s: %s", sid, decision.reason)
        selection = [dg.AssetKey(a) for a in decision.assets]
        run_requests.append(
            dg.RunRequest(
                job_name=slides_job.name,
                partition_key=sid,
                asset_selection=None if decision.state == "new" else selection,
                run_key=f"{sid}:{status.signature}:{decision.version_key}",
                tags={"bms/reason": decision.reason[:200]},
            )
        )
    if not busy and not run_requests:
        try:
            withdrawn = pending_withdrawals(bms, {s.slide_id for s in statuses})
        except (ValueError, OSError) as exc:
            context.log.warning("collection tables wait: %s", exc)
            return _result(run_requests, new_keys, statuses)
        for sid, why in withdrawn.items():
            bms.withdraw_slide(sid)
            context.log.warning("%s withdrawn: %s", sid, why)
        collection_versions = _code_versions(context, collection_job.name)
        if collection_versions and not collection_busy:
            decision, _ = plan_collection(instance, bms, collection_versions)
            if decision.needs_run:
                context.log.info("requesting the collection tables: %s", decision.reason)
                run_requests.append(
                    dg.RunRequest(
                        job_name=collection_job.name,
                        asset_selection=[dg.AssetKey(a) for a in decision.assets],
                        run_key=f"collection:{decision.version_key}",
                        tags={"bms/reason": decision.reason[:200]},
                    )
                )
    return _result(run_requests, new_keys, statuses)


def _result(run_requests: list, new_keys: list[str], statuses: list) -> dg.SensorResult:
    cursor = {s.slide_id: s.signature for s in statuses}
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[slides_partitions.build_add_request(new_keys)]
        if new_keys
        else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )
