"""Real `bms-pipeline` processes on demo data roots, for the crash, console and sensor tests."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bms_pipeline.core.synthetic.demo import write_demo_dataset

DEMO_SLIDES = 1
DEMO_SEED = 21


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def demo_root(root: Path, slides: int = DEMO_SLIDES, seed: int = DEMO_SEED) -> Path:
    """A demo data root whose raw files are an hour old (settled, for the sensor)."""
    write_demo_dataset(root, slides=slides, seed=seed)
    past = time.time() - 3600
    for path in (root / "raw").rglob("*"):
        os.utime(path, (past, past))
    return root


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bms_pipeline.cli", *args]


def start_run(root: Path, *extra: str) -> subprocess.Popen:
    """`bms-pipeline run` in its own process group (so the test can kill the whole group)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.Popen(
        cli("run", "--data-root", str(root), *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> Finished:
    started = time.monotonic()
    out, err = proc.communicate(timeout=timeout)
    return Finished(proc.returncode, out, err, time.monotonic() - started)


def wait_for_conversion(root: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until wsidicomizer has begun writing a series into staging (the middle of sm_series)."""
    deadline = time.monotonic() + timeout
    staging = root / "out" / ".staging"
    while time.monotonic() < deadline:
        if any(staging.glob("*-sm-*/sm")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before converting: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError("no conversion started")


def kill_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    os.killpg(proc.pid, sig)


def dicom_digest(out: Path) -> dict[str, str]:
    """Every DICOM file under out/dicom by path, with the hash of its whole bytes (SM and ANN
    reruns are byte-identical: `core/dicom/determinism.py`)."""
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((out / "dicom").rglob("*.dcm"))
    }
