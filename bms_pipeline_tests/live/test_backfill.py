"""A backfill of 8 slides through the daemon's run queue, steps on 2 Celery workers, data and
outputs in a real S3 API, the instance on PostgreSQL: the same DICOM as one machine."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from bms_pipeline.core.budget import CONVERSION_POOL
from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline_tests.live.instance_ops import (
    materialization_counts,
    open_instance,
    step_failure_text,
    stop_sensors,
    submit_backfill,
    wait_runs_finished,
)
from bms_pipeline_tests.live.services import REPO, local_hashes, remote_hashes, upload_tree

pytestmark = pytest.mark.live

SLIDES = 8
DEPLOYMENT_ENV = (
    "BMS_DAGSTER_POSTGRES_URL",
    "BMS_EXECUTOR",
    "BMS_DATA_ROOT",
    "BMS_OUTPUT_ROOT",
    "DAGSTER_HOME",
    "BMS_SCRATCH",
)


def single_machine_run(root: Path) -> subprocess.Popen:
    """`bms-pipeline run` as on a laptop: SQLite under the data root, in process."""
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "bms_pipeline.cli", "run", "--data-root", str(root)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def sm_intervals(instance: dg.DagsterInstance, run_ids: list[str]) -> list[tuple[float, float]]:
    """(start, end) of every sm_series step, from the instance's event log."""
    spans = []
    for run_id in run_ids:
        start = end = None
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key != "sm_series":
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                start = record.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                end = record.timestamp
        assert start is not None and end is not None, f"run {run_id}: no sm_series step"
        spans.append((start, end))
    return spans


def celery_hosts(instance: dg.DagsterInstance, run_ids: list[str]) -> set[str]:
    """The workers that executed steps (dagster-celery's engine event names each one)."""
    hosts = set()
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            if record.dagster_event is None:
                continue
            worker = record.dagster_event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                hosts.add(str(worker.value).split("@")[0])
    return hosts


def test_backfill_of_8_slides_on_2_celery_workers_equals_single_machine_run(
    tmp_path: Path, s3, make_cluster, postgres_url: str
) -> None:
    generated = tmp_path / "generated"
    dataset = write_demo_dataset(generated, slides=SLIDES, seed=15)
    slide_ids = sorted(dataset.slides)
    reference_root = tmp_path / "single-machine"
    shutil.copytree(generated, reference_root)
    reference = single_machine_run(reference_root)

    fs = s3.filesystem()
    bucket = s3.new_bucket()
    data_url, out_url = f"s3://{bucket}/data", f"s3://{bucket}/out"
    upload_tree(fs, generated, data_url)
    cluster = make_cluster(data_url, out_url)
    instance = open_instance(cluster.home, postgres_url)
    # One conversion at a time across both workers: the pool lives in the instance.
    instance.event_log_storage.set_concurrency_slots(CONVERSION_POOL, 1)
    instance.add_dynamic_partitions("slides", slide_ids)
    stop_sensors(instance)
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.start_daemon()
    cluster.wait_workers_ready()
    submit_backfill(instance, slide_ids)

    runs = wait_runs_finished(instance, SLIDES, timeout=900)
    failed = {r.run_id: step_failure_text(instance, r.run_id) for r in runs if not r.is_success}
    assert not failed, failed
    assert sorted(r.tags["dagster/partition"] for r in runs) == slide_ids
    assert all("dagster/backfill" in r.tags for r in runs)
    run_ids = [r.run_id for r in runs]
    # Both workers executed steps; the daemon's run queue launched every run.
    assert celery_hosts(instance, run_ids) == {"w1", "w2"}

    # The pool held across workers: no two conversions overlapped.
    spans = sorted(sm_intervals(instance, run_ids))
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert not overlaps, f"sm_series steps overlapped despite a pool limit of 1: {overlaps}"

    # One successful materialization per slide and asset, in the Postgres instance.
    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.orchestration.operations import slide_asset_keys

    keys = slide_asset_keys(build_definitions(data_url, output_root=out_url))
    counts = materialization_counts(instance, keys, slide_ids)
    assert counts and set(counts.values()) == {1}, counts

    # Byte for byte the single-machine SQLite run's DICOM: same names, same bytes.
    output, _ = reference.communicate(timeout=900)
    assert reference.returncode == 0, output.decode()[-4000:]
    expected = local_hashes(reference_root / "out" / "dicom")
    got = remote_hashes(fs, f"{out_url}/dicom")
    assert len(expected) >= SLIDES * 5
    assert sorted(got) == sorted(expected)
    assert got == expected
    # Nothing half-written or staged reached the bucket.
    leftovers = [p for p in fs.find(bucket) if ".partial-" in p or "/.staging" in p]
    assert not leftovers
