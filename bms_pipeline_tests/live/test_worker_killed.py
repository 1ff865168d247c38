"""A Celery worker's pool process killed (SIGKILL) in the middle of a conversion."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import dagster as dg
import pytest

from bms_pipeline.core.budget import CONVERSION_POOL
from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.defs.runs import reap_dead_runs
from bms_pipeline_tests.live.instance_ops import (
    materialization_counts,
    open_instance,
    step_failure_text,
    stop_sensors,
    submit_backfill,
    wait_runs_finished,
)
from bms_pipeline_tests.live.services import upload_tree, wait_for

pytestmark = pytest.mark.live


def step_events(instance: dg.DagsterInstance, run_id: str, step_key: str) -> list[str]:
    return [
        record.dagster_event.event_type_value
        for record in instance.all_logs(run_id)
        if record.dagster_event is not None and record.dagster_event.step_key == step_key
    ]


def test_worker_killed_mid_conversion_fails_the_step_and_a_rerun_completes(
    tmp_path: Path, s3, make_cluster, postgres_url: str
) -> None:
    generated = tmp_path / "generated"
    # Big enough that the conversion takes seconds, so the kill lands inside it.
    dataset = write_demo_dataset(generated, slides=1, seed=3, dimensions=(5000, 4000))
    (slide_id,) = dataset.slides
    fs = s3.filesystem()
    bucket = s3.new_bucket()
    data_url, out_url = f"s3://{bucket}/data", f"s3://{bucket}/out"
    upload_tree(fs, generated, data_url)
    cluster = make_cluster(data_url, out_url)
    instance = open_instance(cluster.home, postgres_url)
    instance.add_dynamic_partitions("slides", [slide_id])
    stop_sensors(instance)
    worker = cluster.start_worker("w1")
    cluster.start_daemon()
    cluster.wait_workers_ready()
    submit_backfill(instance, [slide_id])

    # Kill the pool process as soon as wsidicomizer writes its first staged file.
    staged = wait_for(worker.staging_files, 600, "the conversion to write into staging", 0.05)
    children = worker.children()
    assert children, "the worker has no pool process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)

    (failed,) = wait_runs_finished(instance, 1, timeout=300)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    events = step_events(instance, failed.run_id, "sm_series")
    assert "STEP_START" in events and "STEP_SUCCESS" not in events, events
    # As configured (messages acknowledged on receipt): failed, not handed to a worker again.
    messages = [
        (r.dagster_event.step_key, r.dagster_event.message or "")
        for r in instance.all_logs(failed.run_id)
        if r.dagster_event is not None
    ]
    executions = [m for k, m in messages if k == "sm_series" and "in celery worker" in m]
    assert len(executions) == 1, messages
    failure = step_failure_text(instance, failed.run_id)
    assert "[sm_series]" in failure and "WorkerLostError" in failure, failure
    # Nothing half-written reached the output root; the slot went back to the pool.
    fs.invalidate_cache()
    published = [p for p in fs.find(f"{bucket}/out") if f"/dicom/{slide_id}/" in p]
    assert published == [], published
    assert not [p for p in fs.find(bucket) if ".partial-" in p or "/.staging" in p]
    assert staged[0].is_relative_to(worker.scratch)
    # Dagster leaves a failed step's slot claimed (its run monitoring frees it minutes
    # later); the recovery `bms-pipeline run` and the slide sensor run frees it at once.
    pool = instance.event_log_storage.get_concurrency_info(CONVERSION_POOL)
    assert failed.run_id in pool.active_run_ids
    reap_dead_runs(instance)
    pool = instance.event_log_storage.get_concurrency_info(CONVERSION_POOL)
    assert failed.run_id not in pool.active_run_ids

    # The rerun (a new backfill of the slide) completes on the worker's new pool process.
    submit_backfill(instance, [slide_id])
    runs = wait_runs_finished(instance, 2, timeout=600)
    rerun = next(r for r in runs if r.run_id != failed.run_id)
    assert rerun.is_success, step_failure_text(instance, rerun.run_id)
    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.orchestration.operations import slide_asset_keys

    keys = slide_asset_keys(build_definitions(data_url, output_root=out_url))
    counts = materialization_counts(
        instance, [k for k in keys if k.path != ["mrxs_slide"]], [slide_id]
    )
    assert set(counts.values()) == {1}, counts
    fs.invalidate_cache()
    sm = fs.find(f"{bucket}/out/dicom/{slide_id}/sm")
    assert len(sm) >= 4 and all(p.endswith(".dcm") for p in sm)
    assert not [p for p in fs.find(bucket) if ".partial-" in p or "/.staging" in p]
