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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV
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


@dataclass(frozen=True)
class WorkerSettings:
    """What a Celery worker serves steps with: the same roots and instance as the daemon
    whose runs it serves (given to `bms-pipeline worker` or read from their variables)."""

    data_root: str
    """A path or URL (workers may serve object-store roots)."""
    output_root: str | None
    postgres_url: str | None
    scratch: Path
    """This worker's own scratch (mirrors of object-store roots, staged slides)."""


def worker_environment(settings: WorkerSettings, inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of the Celery worker process: `inherited` (PATH, the broker...) with
    the settings written into it explicitly, because the worker is a process of its own in
    which Dagster loads the code location (`definitions.defs`, which reads the roots from
    these variables) and dagster-postgres reads the instance's URL from
    `$BMS_DAGSTER_POSTGRES_URL` (dagster.yaml names the variable, so no password is written
    to disk), in the psycopg2 form it needs. Nothing is written to this process's own
    environment."""
    from bms_pipeline.core.url_roots import SCRATCH_ENV

    env = dict(inherited)
    env[DATA_ROOT_ENV] = settings.data_root
    env[SCRATCH_ENV] = str(settings.scratch)
    if settings.output_root:
        env[OUTPUT_ROOT_ENV] = settings.output_root
    if settings.postgres_url:
        env[POSTGRES_URL_ENV] = PostgresTarget.parse(settings.postgres_url).dagster_url
    return env


def run_worker(
    settings: WorkerSettings,
    name: str,
    concurrency: int,
    loglevel: str,
    inherited: Mapping[str, str],
) -> int:
    """Replace this process by a Celery worker serving the pipeline's steps."""
    settings.scratch.mkdir(parents=True, exist_ok=True)
    env = worker_environment(settings, inherited)
    argv = worker_argv(name, concurrency, loglevel)
    print(
        f"worker {name}: scratch {settings.scratch}, broker {CelerySettings.from_env().broker}",
        flush=True,
    )
    os.execve(sys.executable, argv, env)  # noqa: S606 (this Python, fixed arguments)
    return 0  # not reached
