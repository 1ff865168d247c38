"""The Dagster instance under the data root: a dagster.yaml sized for this machine.

Its pool limit and run concurrency come from the machine budget (`core.budget`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bms_pipeline.core.budget import CONVERSION_POOL, GIB, MachineBudget
from bms_pipeline.core.layout import DataLayout

__all__ = ["CONVERSION_POOL", "MachineBudget", "ensure_instance_home", "render_dagster_yaml"]

DAGSTER_LOG_LEVEL_ENV = "BMS_DAGSTER_LOG_LEVEL"
"""Level of Dagster's console log in runs the CLI executes (DEBUG with `-v`)."""


def instance_home(layout: DataLayout) -> Path:
    """The persistent Dagster instance of `bms-pipeline run`, under the data root."""
    return layout.root / ".dagster"


def render_dagster_yaml(budget: MachineBudget, postgres: bool = False) -> str:
    slots = budget.concurrent_conversions
    return f"""\
# Written by bms-pipeline for this machine ({budget.cores} cores, {budget.memory_bytes / GIB:.0f} GiB).
{_storage_yaml(postgres)}telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: {slots}
  pools:
    default_limit: {slots}   # the {CONVERSION_POOL} pool caps parallel conversions
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  free_slots_after_run_end_seconds: 60   # a crashed run gives its pool slot back
"""


def ensure_instance_home(
    home: Path, budget: MachineBudget | None = None, postgres: bool = False
) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml if it has none (an existing one is kept).

    `postgres` (`$BMS_DAGSTER_POSTGRES_URL` is set) asks for Postgres storage: a dagster.yaml
    that bms-pipeline wrote with the other storage is rewritten, so the setting, not a file
    left by an earlier run, decides where the instance lives. A dagster.yaml written by hand
    is never touched."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if config.exists():
        text = config.read_text(encoding="utf-8")
        ours = text.startswith(_WRITTEN_BY)
        if not ours or (POSTGRES_STORAGE_MARK in text) == postgres:
            return config
    tmp = config.with_name(f".dagster.yaml.{os.getpid()}.tmp")
    tmp.write_text(
        render_dagster_yaml(budget or MachineBudget.detect(), postgres=postgres), encoding="utf-8"
    )
    os.replace(tmp, config)
    return config


_WRITTEN_BY = "# Written by bms-pipeline"
POSTGRES_STORAGE_MARK = "# storage: PostgreSQL"


def _storage_yaml(postgres: bool) -> str:
    """The storage section: SQLite in DAGSTER_HOME (Dagster's default, so nothing is
    written), or dagster-postgres for runs, event log and schedules. The URL is read from
    the environment by Dagster itself, so no password is ever written to disk."""
    if not postgres:
        return '# SQLite storage in this folder; see README.md ("Several machines") for Postgres.\n'
    from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV

    return f"""{POSTGRES_STORAGE_MARK} (dagster-postgres), the URL from ${POSTGRES_URL_ENV}.
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_URL_ENV}
"""


# -- the run worker's identity, so a run whose process died can be told from a live one ------

WORKER_TAG = "bms/worker"
"""Run tag `host:pid:start-time` of the process executing the run (pid alone can be reused)."""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may contain spaces, so split after its ")".
    return stat.rsplit(")", 1)[1].split()[19]


def worker_identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def worker_alive(identity: str) -> bool:
    """False only when the worker is known to be gone: same host, and no such process (or a
    different process now holding its pid). A worker on another host counts as alive."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return not started or _process_start(pid) in ("", started)


# -- locks in the Dagster home ----------------------------------------------------------------


@contextmanager
def instance_lock(home: Path) -> Iterator[None]:
    """Held while the instance is created, so two processes on a new root do not both create
    the SQLite schema (`table run_tags already exists`)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".instance.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def root_run_lock(home: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """One `bms-pipeline run` per data root at a time: a second one waits (saying so via
    `on_wait`) and then finds the first one's work done. Released when the process dies."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "run.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            on_wait(
                f"waiting for the other `bms-pipeline run` on this data root ({holder}) to finish"
            )
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- recovery from runs whose process died ----------------------------------------------------


def reap_dead_runs(instance) -> list[str]:  # instance: dg.DagsterInstance
    """Mark in-progress runs whose worker process is gone as failed and free every pool slot
    held by a run that is gone or finished, without the daemon (whose run monitoring does this
    only when it runs). Returns the ids of the runs marked failed."""
    import dagster as dg

    reaped = []
    active = [
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=active)):
        run = record.dagster_run
        identity = run.tags.get(WORKER_TAG)
        if identity is None or worker_alive(identity):
            continue
        host, pid = identity.split(":")[:2]
        from bms_pipeline.defs.facts import PROCESS_DIED_TAG

        # Not a verdict on the slide's inputs: the next run tries it again.
        instance.add_run_tags(run.run_id, {PROCESS_DIED_TAG: "1"})
        instance.report_run_failed(
            run, message=f"the process running this run (pid {pid} on {host}) is gone"
        )
        reaped.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished or run.run_id in reaped:
                storage.free_concurrency_slots_for_run(run_id)
    return reaped


def live_workers(instance) -> set[str]:  # instance: dg.DagsterInstance
    """Identities of the processes of in-progress runs that are still alive."""
    import dagster as dg

    active = [
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return {
        identity
        for record in instance.get_run_records(filters=dg.RunsFilter(statuses=active))
        if (identity := record.dagster_run.tags.get(WORKER_TAG)) and worker_alive(identity)
    }


_TEMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.tmp(\.wal)?$")  # core.store._temp_beside


def remove_stale_outputs(out: Path, instance, me: str | None = None) -> list[Path]:
    """Remove what killed runs left half-written: staging folders and retired series (only
    when no other run is alive, since their names do not say whose they are) and atomic-write
    temp files whose writer process is gone. Anything modified after the check for live runs
    is kept, so a run that starts meanwhile keeps its staging folder."""
    now = time.time()
    others = live_workers(instance) - {me or worker_identity()}
    removed: list[Path] = []

    def drop(path: Path) -> None:
        try:
            if path.lstat().st_mtime >= now:
                return
        except FileNotFoundError:
            return
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)

    if not others:
        staging = out / ".staging"
        if staging.is_dir():
            for entry in staging.iterdir():
                drop(entry)
        for retired in out.glob("dicom/*/.retired-*"):
            drop(retired)
    for folder in (out, out / "tables", out / "validation", out / "index"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _TEMP_FILE.match(entry.name)
            if match and not worker_alive(f"{socket.gethostname()}:{match.group(1)}:"):
                drop(entry)
    return removed
