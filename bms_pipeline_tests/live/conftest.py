"""Fixtures of the `live` tests: a real S3 server, a fresh Postgres database, and the
daemon and Celery workers of a deployment beyond one machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bms_pipeline_tests.live.services import (
    BROKER,
    RABBIT_HOST,
    RABBIT_PORT,
    Cluster,
    S3Server,
    fresh_database,
    purge_queue,
    require_port,
    s3_server,
)

pytestmark = pytest.mark.live


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def make_cluster(
    tmp_path: Path, s3: S3Server, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator:
    """Build the deployment's shared environment (Postgres instance, bucket roots, Celery
    executor) in this process too, so the backfill this test submits is the one the daemon
    and workers see; processes are stopped afterwards."""
    from bms_pipeline.orchestration.deploy import PostgresTarget, ensure_postgres_database

    require_port(RABBIT_HOST, RABBIT_PORT, "RabbitMQ")
    clusters: list[Cluster] = []

    def build(data_url: str, out_url: str) -> Cluster:
        target = ensure_postgres_database(postgres_url)
        home = tmp_path / "dagster_home"
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        env = {
            **os.environ,
            **s3.env(),
            "DAGSTER_HOME": str(home),
            "BMS_DAGSTER_POSTGRES_URL": PostgresTarget.parse(postgres_url).dagster_url,
            "BMS_DATA_ROOT": data_url,
            "BMS_OUTPUT_ROOT": out_url,
            "BMS_EXECUTOR": "celery",
            "BMS_CELERY_BROKER": BROKER,
            "BMS_SCRATCH": str(tmp_path / "scratch-submitter"),
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in env.items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        del target
        purge_queue()
        cluster = Cluster(env=env, home=home, logs=logs)
        clusters.append(cluster)
        return cluster

    yield build
    for cluster in clusters:
        cluster.stop()
