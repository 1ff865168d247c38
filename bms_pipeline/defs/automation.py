"""Nightly backfills: once a night, every slide that the one decision (`core.run_decision`)
says needs a run is requested, with exactly the assets whose inputs changed. The sensor does
the same every 30 s while it runs; the schedule is the backstop when it is stopped."""

import dagster as dg

from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.jobs import slides_job

NIGHTLY_CRON = "0 2 * * *"
TIMEZONE = "UTC"


@dg.schedule(
    cron_schedule=NIGHTLY_CRON,
    execution_timezone=TIMEZONE,
    job=slides_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly: a run for every slide that is new or whose inputs or code changed "
    "(never one that rests as refused or failed on the same inputs).",
)
def nightly_backfills(
    context: dg.ScheduleEvaluationContext, bms: BmsPipelineResource
) -> list[dg.RunRequest] | dg.SkipReason:
    from bms_pipeline.defs.facts import plan_slides

    repository = context.repository_def
    graph = repository.asset_graph
    selected = repository.get_job(slides_job.name).asset_layer.selected_asset_keys
    versions = {
        k.to_user_string(): str(graph.get(k).code_version or "")
        for k in graph.toposorted_asset_keys
        if k in selected
    }
    known = set(context.instance.get_dynamic_partitions("slides"))
    requests = []
    for status, decision in plan_slides(context.instance, bms, versions):
        if not decision.needs_run or status.slide_id not in known:
            continue  # new slides are registered by the sensor
        requests.append(
            dg.RunRequest(
                partition_key=status.slide_id,
                asset_selection=[dg.AssetKey(a) for a in decision.assets],
                run_key=f"nightly:{status.slide_id}:{status.signature}:{decision.version_key}",
                tags={"bms/reason": decision.reason[:200]},
            )
        )
    return requests or dg.SkipReason("every slide is up to date, resting or not ready")


IDEMPOTENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
"""For assets whose writes are atomic and idempotent and whose failures can be transient
(the DuckDB lock timing out, a validator subprocess timing out). Conversions get none:
a corrupt slide fails the same way every time, and should fail fast with its reason."""
