"""Talking to the shared instance as an operator would: open it, stop the sensors, submit a
backfill to the daemon's run queue, wait for runs, count materializations."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from bms_pipeline.orchestration.deploy import PostgresTarget, postgres_schema_lock
from bms_pipeline.orchestration.instance import ensure_instance_home
from bms_pipeline_tests.live.services import REPO

FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


def open_instance(home: Path, postgres_url: str) -> dg.DagsterInstance:
    """The Postgres instance as `bms-pipeline` creates it (dagster.yaml written, schema
    created under the advisory lock)."""
    ensure_instance_home(home, postgres=True)
    with postgres_schema_lock(PostgresTarget.parse(postgres_url)):
        instance = dg.DagsterInstance.from_config(str(home))
        instance.get_runs(limit=1)
        instance.event_log_storage.get_concurrency_keys()
    return instance


def _workspace_opts():
    from dagster_shared.cli import WorkspaceOpts

    return WorkspaceOpts(workspace=(str(REPO / "workspace.yaml"),))


def stop_sensors(instance: dg.DagsterInstance) -> None:
    """Stop the sensors that are on by default, so that only the backfill launches runs."""
    from dagster._cli.workspace.cli_target import get_workspace_from_cli_opts

    with get_workspace_from_cli_opts(instance, "", _workspace_opts()) as workspace:
        location = workspace.get_code_location("bms_pipeline")
        (repo,) = location.get_repositories().values()
        for sensor in repo.get_sensors():
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)


def submit_backfill(instance: dg.DagsterInstance, slide_ids: list[str]) -> None:
    """`dagster job backfill` of slides_job: one queued run per slide, launched by the daemon."""
    from dagster._cli.job import execute_backfill_command

    execute_backfill_command(
        workspace_opts=_workspace_opts(),
        partitions=",".join(slide_ids),
        noprompt=True,
        job_name="slides_job",
        instance=instance,
        print_fn=lambda *_: None,
    )


def wait_runs_finished(
    instance: dg.DagsterInstance, count: int, timeout: float, job: str = "slides_job"
) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + timeout
    while True:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
        if len(runs) >= count and all(r.status in FINISHED for r in runs):
            return list(runs)
        if time.monotonic() > deadline:
            states = sorted(f"{r.tags.get('dagster/partition')}: {r.status.value}" for r in runs)
            raise AssertionError(f"runs not finished after {timeout:.0f} s: {states}")
        time.sleep(1)


def materialization_counts(
    instance: dg.DagsterInstance, keys: list[dg.AssetKey], partitions: list[str]
) -> dict[tuple[str, str], int]:
    """(asset, slide) -> successful materializations in the instance."""
    counts = {}
    for key in keys:
        for partition in partitions:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=100
            ).records
            counts[(key.to_user_string(), partition)] = len(records)
    return counts


def step_failure_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every error message of a run's event log, for assertion messages."""
    texts = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and (event.is_step_failure or event.is_failure):
            texts.append(f"{event.step_key}: {event.message}")
            data = event.step_failure_data if event.is_step_failure else event.job_failure_data
            if data is not None and data.error is not None:
                texts.append(data.error.to_string()[:4000])
    return "\n".join(texts)
