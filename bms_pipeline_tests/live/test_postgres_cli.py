"""`bms-pipeline run` with its instance on PostgreSQL: the same DICOM as SQLite, and two
runs writing to one instance at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV, PostgresTarget
from bms_pipeline_tests.live.services import REPO, local_hashes

pytestmark = pytest.mark.live

OTHER_DEPLOYMENT_ENV = ("BMS_EXECUTOR", "BMS_DATA_ROOT", "BMS_OUTPUT_ROOT", "DAGSTER_HOME")


def cli_run(root: Path, postgres_url: str | None, *extra: str) -> subprocess.Popen:
    env = {
        k: v for k, v in os.environ.items() if k not in (*OTHER_DEPLOYMENT_ENV, POSTGRES_URL_ENV)
    }
    if postgres_url is not None:
        env[POSTGRES_URL_ENV] = postgres_url
    return subprocess.Popen(
        [sys.executable, "-m", "bms_pipeline.cli", "run", "--data-root", str(root), *extra],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    text = output.decode()
    assert process.returncode == 0, text[-4000:]
    return text


def database_exists(url: str) -> bool:
    target = PostgresTarget.parse(url)
    conn = psycopg2.connect(target.with_database("postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def postgres_instance(home: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    """The instance a run left in `home`, opened here (dagster.yaml reads the URL from the
    environment)."""
    monkeypatch.setenv(POSTGRES_URL_ENV, PostgresTarget.parse(url).dagster_url)
    return dg.DagsterInstance.from_config(str(home))


def slide_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs of one slide: the runs that carry a slide partition."""
    return [r for r in instance.get_runs() if "dagster/partition" in r.tags]


def test_postgres_instance_gives_the_same_dicom_as_sqlite(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    assert not database_exists(postgres_url)
    on_postgres = tmp_path / "postgres"
    write_demo_dataset(on_postgres, slides=2, seed=2715)  # a dataset no other test uses
    on_sqlite = tmp_path / "sqlite"
    shutil.copytree(on_postgres, on_sqlite)

    pg = cli_run(on_postgres, postgres_url)
    sq = cli_run(on_sqlite, None)
    finish(pg)
    finish(sq)

    expected = local_hashes(on_sqlite / "out" / "dicom")
    got = local_hashes(on_postgres / "out" / "dicom")
    assert len(expected) >= 2 * 5
    assert got == expected
    # The instance really lives in Postgres (created by the run), not in SQLite files.
    assert database_exists(postgres_url)
    home = on_postgres / ".dagster"
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
    assert list((on_sqlite / ".dagster").rglob("runs.db"))
    instance = postgres_instance(home, postgres_url, monkeypatch)
    runs = slide_runs(instance)
    assert runs and all(r.is_success for r in runs)
    assert {r.tags["dagster/partition"] for r in runs} == {
        p.name.removesuffix(".mrxs") for p in (on_postgres / "raw" / "slides").glob("*.mrxs")
    }


def test_two_runs_write_to_one_postgres_instance_at_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines (two data roots, two Dagster homes) start on a fresh database at the same
    moment: both create the schema, register slides and write events concurrently."""
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    roots = [tmp_path / "machine-a", tmp_path / "machine-b"]
    slides = {}
    for seed, root in enumerate(roots, start=41):
        slides[root] = set(write_demo_dataset(root, slides=1, seed=seed).slides)
    assert not slides[roots[0]] & slides[roots[1]]

    processes = [cli_run(root, postgres_url, "--jobs", "1") for root in roots]
    outputs = [finish(p) for p in processes]
    assert all("1/1 slides ok" in out for out in outputs), outputs

    instance = postgres_instance(roots[0] / ".dagster", postgres_url, monkeypatch)
    runs = instance.get_runs()
    assert runs and all(r.is_success for r in runs), [(r.run_id, r.status) for r in runs]
    by_partition: dict[str, int] = {}
    for run in slide_runs(instance):
        partition = run.tags["dagster/partition"]
        by_partition[partition] = by_partition.get(partition, 0) + 1
    assert set(by_partition) == slides[roots[0]] | slides[roots[1]]
    assert set(instance.get_dynamic_partitions("slides")) == set(by_partition)
    # Each run's event log is whole: it starts and ends, and every slide's conversion is in
    # the instance once.
    for run in runs:
        types = {
            e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.dagster_event
        }
        assert {dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS} <= types
    for slide in by_partition:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("sm_series"), asset_partitions=[slide]),
            limit=10,
        ).records
        assert len(records) == 1, slide
    # Both machines' collection tables landed (each of its own output root), each in a
    # collection run of its own.
    tables = instance.fetch_materializations(dg.AssetKey("clinical_tables"), limit=10).records
    assert len(tables) == 2
    assert {instance.get_run_by_id(r.run_id).job_name for r in tables} == {  # type: ignore[union-attr]
        "collection_job"
    }
