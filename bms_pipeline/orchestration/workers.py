"""Steps on workers: the executor the definitions use, and `bms-pipeline worker`.

`BMS_EXECUTOR=celery` makes every run that Dagster launches (the daemon's run queue, the UI,
a backfill) send each step to a Celery worker through the broker; the run itself only
orchestrates. `bms-pipeline run` executes in process as before, whatever the setting.
Conversions keep their `wsi_conversion` pool limit across workers because the slots live
in the instance (Postgres) and are claimed by each run before it sends a step out.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import dagster as dg

from bms_pipeline.orchestration.deploy import (
    POSTGRES_URL_ENV,
    CelerySettings,
    PostgresTarget,
    executor_name,
)

WORKER_QUEUE = "dagster"  # dagster-celery's default queue


def select_executor() -> dg.ExecutorDefinition:
    """The executor named by `BMS_EXECUTOR`: in-process (default: a slide's steps run one
    after the other, and each step process would pay seconds of imports) or Celery."""
    if executor_name() == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(CelerySettings.from_env().executor_config())
    return dg.in_process_executor


def default_worker_scratch(name: str) -> Path:
    """Each worker's own scratch (mirrors of object-store roots, staged slides): two
    workers on one machine never share a staging folder."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / "bms-pipeline"  # noqa: S108 (its own folder)
    return base / f"worker-{name}"


def worker_argv(name: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    """The Celery command line of one worker: one step at a time per process it forks,
    taking a new message only when it is free (prefetch 1)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bms_pipeline.orchestration.celery_app",
        "worker",
        "-n",
        f"{name}@{socket.gethostname()}",
        "-Q",
        WORKER_QUEUE,
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def worker_environment(scratch: Path) -> dict[str, str]:
    """The environment a worker runs with: its scratch, and the Postgres URL in the form
    dagster-postgres needs (the instance reference each step carries reads it from here)."""
    env = dict(os.environ)
    env["BMS_SCRATCH"] = str(scratch)
    url = env.get(POSTGRES_URL_ENV)
    if url:
        env[POSTGRES_URL_ENV] = PostgresTarget.parse(url).dagster_url
    return env


def run_worker(name: str | None, scratch: str | None, concurrency: int, loglevel: str) -> int:
    """Replace this process by a Celery worker serving the pipeline's steps."""
    from bms_pipeline.core.layout import DATA_ROOT_ENV

    name = name or f"bms-{os.getpid()}"
    if not os.environ.get(DATA_ROOT_ENV):
        print(
            f"error: ${DATA_ROOT_ENV} is not set: a worker builds the same definitions as the "
            "runs it serves, so it needs the same data root (and $BMS_OUTPUT_ROOT)",
            file=sys.stderr,
        )
        return 2
    folder = Path(scratch) if scratch else default_worker_scratch(name)
    folder.mkdir(parents=True, exist_ok=True)
    env = worker_environment(folder)
    argv = worker_argv(name, concurrency, loglevel)
    print(f"worker {name}: scratch {folder}, broker {CelerySettings.from_env().broker}", flush=True)
    os.execve(sys.executable, argv, env)  # noqa: S606 (this Python, fixed arguments)
    return 0  # not reached
