"""The Dagster instance under the data root: a dagster.yaml sized for this machine.

Its pool limit and run concurrency come from the machine budget (`core.budget`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bms_pipeline.core.budget import CONVERSION_POOL, GIB, MachineBudget
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.worker_identity import local_pid_alive, worker_identity


def instance_home(layout: DataLayout) -> Path:
    """The persistent Dagster instance of `bms-pipeline run`, under the data root."""
    return layout.dagster_home


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


def remove_stale_outputs(out: Path, instance, me: str | None = None) -> list[Path]:
    """Remove what killed runs left half-written (`core.atomic_outputs.leftovers`): staging folders
    and retired series (only when no other run is alive, since their names do not say whose
    they are) and atomic-write temp files whose writer process is gone. Anything modified
    after the check for live runs is kept, so a run that starts meanwhile keeps its staging
    folder."""
    from bms_pipeline.core.atomic_outputs import leftovers, temp_file_writer

    now = time.time()
    from bms_pipeline.defs.runs import live_workers  # Dagster, only when outputs are swept

    others = live_workers(instance) - {me or worker_identity()}
    left = leftovers(DataLayout.of_outputs(out))
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
        for entry in left.unowned:
            drop(entry)
    for entry in left.temp_files:
        pid = temp_file_writer(entry.name)
        if pid is not None and not local_pid_alive(pid):
            drop(entry)
    return removed
