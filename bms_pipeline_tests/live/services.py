"""The live services the `live` tests run against, started or reached for real.

PostgreSQL, RabbitMQ (and Redis) are started on every machine of this project before a
session or CI run; a test skips, naming the service, where one is absent. The S3 server
is moto's server mode (a real HTTP S3 API on 127.0.0.1), started here. The daemon and
the Celery workers are the real processes an operator would start, as subprocesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_HOST, PG_PORT = "127.0.0.1", 5432
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
BROKER = f"pyamqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "bms-live-test",
    "AWS_SECRET_ACCESS_KEY": "bms-live-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_port(host: str, port: int, service: str) -> None:
    if not port_open(host, port):
        pytest.skip(f"{service} is not reachable at {host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for[T](predicate: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """The predicate's first truthy value, polled every `every` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- PostgreSQL ------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A database that did not exist (bms-pipeline creates it), dropped afterwards; yields
    its plain postgresql:// URL."""
    import psycopg2

    require_port(PG_HOST, PG_PORT, "PostgreSQL")
    name = f"bms_live_{uuid.uuid4().hex[:10]}"
    yield f"postgresql://root@{PG_HOST}:{PG_PORT}/{name}"
    conn = psycopg2.connect(f"postgresql://root@{PG_HOST}:{PG_PORT}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


# -- S3 (moto server) ------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        """What s3fs/botocore need to talk to this server instead of AWS."""
        return {
            **S3_KEYS,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "FSSPEC_S3_ENDPOINT_URL": self.endpoint,
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_KEYS["AWS_ACCESS_KEY_ID"],
            secret=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )

    def new_bucket(self) -> str:
        fs = self.filesystem()
        name = f"bms-live-{uuid.uuid4().hex[:8]}"
        fs.mkdir(name)
        return name


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.skip("moto's server (moto[server]) is not installed")
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 30, "moto's S3 server to listen")
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(10)


def upload_tree(fs, local: Path, url: str) -> None:
    base = url.removeprefix("s3://")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{base}/{path.relative_to(local).as_posix()}")


def remote_hashes(fs, url: str) -> dict[str, str]:
    """sha256 of every object below `url`, keyed by the path below it."""
    base = url.removeprefix("s3://").rstrip("/")
    fs.invalidate_cache()
    if not fs.exists(base):
        return {}
    return {
        path.removeprefix(f"{base}/"): hashlib.sha256(fs.cat_file(path)).hexdigest()
        for path in fs.find(base)
    }


def local_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- Celery workers and the daemon -----------------------------------------------------------


def purge_queue() -> None:
    """Drop messages a killed earlier test left in the broker's queue."""
    from bms_pipeline.orchestration.celery_app import app

    with contextlib.suppress(Exception):
        app.control.purge()


@dataclass
class Worker:
    name: str
    scratch: Path
    process: subprocess.Popen
    log: Path

    def children(self) -> list[int]:
        """The worker's pool processes (Celery's prefork children), which run the steps."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def staging_files(self) -> list[Path]:
        """Files being written in this worker's staging folders (its output mirror)."""
        return [p for p in self.scratch.glob("mirror/*/.staging/**/*") if p.is_file()]


@dataclass
class Cluster:
    """The processes of a multi-machine deployment, on one machine: the daemon, workers,
    each with its own scratch, sharing the Postgres instance, the broker and the bucket."""

    env: dict[str, str]
    home: Path
    logs: Path
    workers: list[Worker] = field(default_factory=list)
    daemon: subprocess.Popen | None = None

    def start_worker(self, name: str) -> Worker:
        scratch = self.logs.parent / f"scratch-{name}"
        log = self.logs / f"worker-{name}.log"
        with open(log, "wb") as fh:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bms_pipeline.cli",
                    "worker",
                    "--name",
                    name,
                    "--scratch",
                    str(scratch),
                    "--concurrency",
                    "1",
                ],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        worker = Worker(name, scratch, process, log)
        self.workers.append(worker)
        return worker

    def wait_workers_ready(self, timeout: float = 120) -> None:
        for worker in self.workers:
            wait_for(
                lambda w=worker: b" ready." in w.log.read_bytes() or w.process.poll() is not None,
                timeout,
                f"worker {worker.name} to be ready",
            )
            assert worker.process.poll() is None, worker.log.read_text()[-3000:]

    def start_daemon(self) -> None:
        log = self.logs / "daemon.log"
        with open(log, "wb") as fh:
            self.daemon = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("dagster-daemon")),
                    "run",
                    "-w",
                    str(REPO / "workspace.yaml"),
                ],
                env={**self.env, "BMS_SCRATCH": str(self.logs.parent / "scratch-daemon")},
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )

    def stop(self) -> None:
        for process in [w.process for w in self.workers] + ([self.daemon] if self.daemon else []):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in [w.process for w in self.workers] + ([self.daemon] if self.daemon else []):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
