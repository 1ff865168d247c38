"""The deployment settings (bms_pipeline.orchestration.deploy, workers, instance): parsing, errors that
name the setting and the reason, and the dagster.yaml that follows the storage setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bms_pipeline.orchestration.deploy import (
    EXECUTOR_ENV,
    POSTGRES_URL_ENV,
    CelerySettings,
    DeploymentError,
    PostgresTarget,
    ensure_postgres_database,
    executor_name,
)
from bms_pipeline.orchestration.instance import MachineBudget, ensure_instance_home
from bms_pipeline.orchestration.workers import (
    WorkerSettings,
    select_executor,
    worker_environment,
)
from bms_pipeline_tests.live.services import free_port

BUDGET = MachineBudget(cores=4, memory_bytes=16 << 30)


def test_postgres_url_is_checked_and_redacted() -> None:
    with pytest.raises(
        DeploymentError, match=rf"{POSTGRES_URL_ENV}=mysql://\*\*\*@h/d: not a PostgreSQL"
    ):  # the user is half of the credentials: masked too
        PostgresTarget.parse("mysql://u@h/d")
    with pytest.raises(DeploymentError, match="names no database") as info:
        PostgresTarget.parse("postgresql://u:hunter2@h:5432/")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    target = PostgresTarget.parse("postgresql+psycopg2://u:pw@db.internal:6543/bms")
    assert target.url == "postgresql://u:pw@db.internal:6543/bms"
    assert target.dagster_url == "postgresql+psycopg2://u:pw@db.internal:6543/bms"
    assert (target.database, target.server) == ("bms", "db.internal:6543")
    assert target.with_database("postgres").endswith("@db.internal:6543/postgres")


def test_unreachable_server_is_an_error_naming_it() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(
        DeploymentError, match=f"cannot reach the PostgreSQL server 127.0.0.1:{port}"
    ):
        ensure_postgres_database(f"postgresql://root:pw@127.0.0.1:{port}/bms")


def test_dagster_yaml_follows_the_storage_setting(tmp_path: Path) -> None:
    config = ensure_instance_home(tmp_path, BUDGET)
    assert "storage" not in yaml.safe_load(config.read_text())
    ensure_instance_home(tmp_path, BUDGET, postgres=True)
    parsed = yaml.safe_load(config.read_text())
    assert parsed["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_ENV}}}
    # The same run queue, pool and monitoring settings as the SQLite default.
    sqlite = yaml.safe_load(ensure_instance_home(tmp_path / "other", BUDGET).read_text())
    assert {k: v for k, v in parsed.items() if k != "storage"} == sqlite
    ensure_instance_home(tmp_path, BUDGET)  # back to SQLite when the setting is gone
    assert "storage" not in yaml.safe_load(config.read_text())
    config.write_text("# mine\ntelemetry:\n  enabled: false\n")
    ensure_instance_home(tmp_path, BUDGET, postgres=True)  # a hand-written file is kept
    assert config.read_text() == "# mine\ntelemetry:\n  enabled: false\n"


def test_executor_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert executor_name() == "in_process"
    assert select_executor().name == "in_process"
    monkeypatch.setenv(EXECUTOR_ENV, "dask")
    with pytest.raises(DeploymentError, match="BMS_EXECUTOR='dask': unknown executor"):
        executor_name()
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    monkeypatch.setenv("BMS_CELERY_BROKER", "pyamqp://guest:guest@mq:5672//")
    executor = select_executor()
    assert executor.name == "celery"
    assert CelerySettings.from_env().executor_config()["broker"] == "pyamqp://guest:guest@mq:5672//"


def test_worker_environment_has_its_own_scratch_and_the_psycopg2_url(tmp_path: Path) -> None:
    settings = WorkerSettings(
        data_root="s3://bucket/data",
        output_root=None,
        postgres_url="postgresql://root@127.0.0.1:5432/bms",
        scratch=tmp_path / "w1",
    )
    env = worker_environment(settings, inherited={"PATH": "/usr/bin"})
    assert env["BMS_SCRATCH"] == str(tmp_path / "w1")
    assert env[POSTGRES_URL_ENV] == "postgresql+psycopg2://root@127.0.0.1:5432/bms"
    # The settings travel in the child's environment, the inherited one with them.
    assert env["BMS_DATA_ROOT"] == "s3://bucket/data" and env["PATH"] == "/usr/bin"
    assert "BMS_OUTPUT_ROOT" not in env
