"""A killed run blocks nothing and leaves nothing; a stop signal ends a run within seconds.

Real processes, real signals: `bms-pipeline run` in its own process group, SIGKILLed or
SIGTERMed while wsidicomizer is writing a series into staging.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import dagster as dg

from bms_pipeline.core.budget import CONVERSION_POOL
from bms_pipeline_tests.cli_runs import (
    demo_root,
    dicom_digest,
    finish,
    kill_group,
    start_run,
    wait_for_conversion,
)
from bms_pipeline_tests.conftest import ConvertedRoot


def _runs(root: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(root / ".dagster")) as instance:
        return [r.dagster_run for r in instance.get_run_records()]


def _claimed_slots(root: Path) -> int:
    with dg.DagsterInstance.from_config(str(root / ".dagster")) as instance:
        return len(instance.event_log_storage.get_concurrency_info(CONVERSION_POOL).claimed_slots)


def test_stopped_and_killed_runs_block_nothing_and_the_next_run_matches_an_uninterrupted_one(
    tmp_path: Path, cli_converted: ConvertedRoot
) -> None:
    root = demo_root(tmp_path / "data")  # the same slide as the uninterrupted fixture root
    staging = root / "out" / ".staging"

    # SIGTERM mid-conversion: out within seconds, the run canceled, nothing left behind.
    proc = start_run(root)
    wait_for_conversion(root, proc)
    signalled = time.monotonic()
    kill_group(proc, signal.SIGTERM)
    stopped = finish(proc, timeout=30)
    assert time.monotonic() - signalled < 10
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "SIGTERM: stopping" in stopped.stderr
    assert dg.DagsterRunStatus.CANCELED in {r.status for r in _runs(root)}
    assert not any(r.status == dg.DagsterRunStatus.STARTED for r in _runs(root))
    assert _claimed_slots(root) == 0
    assert not any(staging.iterdir())
    assert not list((root / "out" / "dicom").glob("*/sm"))  # nothing half-written in place

    # SIGKILL of the process group mid-conversion: a STARTED run holding a pool slot and a
    # half-written series in staging are left ...
    proc = start_run(root)
    wait_for_conversion(root, proc)
    kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    assert any(r.status == dg.DagsterRunStatus.STARTED for r in _runs(root))
    assert _claimed_slots(root) >= 1
    assert any(staging.iterdir())

    # ... and the next run clears them without the daemon and converts as if nothing happened.
    again = finish(start_run(root), timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "its process is gone; marked failed, pool slots freed" in again.stdout
    assert "half-written output" in again.stdout
    assert not any(r.status == dg.DagsterRunStatus.STARTED for r in _runs(root))
    assert _claimed_slots(root) == 0
    assert not any(staging.iterdir())
    assert dicom_digest(root / "out") == dicom_digest(cli_converted.root / "out")
    tables = sorted(p.name for p in (root / "out" / "tables").glob("*.parquet"))
    assert tables == sorted(
        p.name for p in (cli_converted.root / "out" / "tables").glob("*.parquet")
    )
