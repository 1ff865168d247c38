"""Running beyond one machine: the Postgres instance and the Celery executor's settings.

Dagster-free on purpose (psycopg2 only, imported lazily) so the CLI can check the server
before it builds an instance, and so workers, the daemon and `run` all read the same
settings from the same environment variables:

- `BMS_DAGSTER_POSTGRES_URL` (or `--postgres-url`): run, event-log and schedule storage on
  PostgreSQL instead of SQLite under the data root;
- `BMS_EXECUTOR=celery` with `BMS_CELERY_BROKER` (default RabbitMQ on localhost) and
  `BMS_CELERY_BACKEND`: a run's steps go to Celery workers (`bms-pipeline worker`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

POSTGRES_URL_ENV = "BMS_DAGSTER_POSTGRES_URL"
EXECUTOR_ENV = "BMS_EXECUTOR"
BROKER_ENV = "BMS_CELERY_BROKER"
BACKEND_ENV = "BMS_CELERY_BACKEND"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "rpc://"
EXECUTORS = ("in_process", "celery")


class DeploymentError(RuntimeError):
    """A deployment setting is wrong or its service cannot be reached; the message names
    the setting or the server and the reason."""


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresTarget:
    """A PostgreSQL database given as a URL, split into what psycopg2 and Dagster need."""

    url: str
    """As given, but with the `+psycopg2` driver suffix removed (psycopg2 rejects it)."""

    @classmethod
    def parse(cls, url: str) -> PostgresTarget:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.split("+", 1)[0]
        if scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise DeploymentError(
                f"{POSTGRES_URL_ENV}={_redact(url)}: not a PostgreSQL URL "
                "(expected postgresql://user[:password]@host[:port]/database)"
            )
        if not parts.path.strip("/"):
            raise DeploymentError(
                f"{POSTGRES_URL_ENV}={_redact(url)}: names no database "
                "(expected postgresql://user@host:port/database)"
            )
        return cls(urlunsplit(("postgresql", *parts[1:])))

    @property
    def dagster_url(self) -> str:
        """The URL for dagster-postgres's SQLAlchemy engine, naming psycopg2 (the driver
        dagster-postgres is written for: SQLAlchemy 2.1 would pick psycopg 3 for a bare
        `postgresql://`, whose NOTIFY dagster-postgres's event watcher cannot send)."""
        return urlunsplit(("postgresql+psycopg2", *urlsplit(self.url)[1:]))

    @property
    def database(self) -> str:
        return urlsplit(self.url).path.strip("/")

    @property
    def server(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 5432}"

    def with_database(self, name: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    @property
    def redacted(self) -> str:
        return _redact(self.url)


def _redact(url: str) -> str:
    """The URL without its user and password (`postgresql://***@host:port/db`), for messages."""
    from bms_pipeline.core.privacy.credentials import redact

    return redact(url)


def postgres_url_from_env() -> str | None:
    return os.environ.get(POSTGRES_URL_ENV) or None


def _connect(url: str, target: PostgresTarget):
    import psycopg2

    try:
        return psycopg2.connect(url, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise DeploymentError(
            f"cannot reach the PostgreSQL server {target.server} for the Dagster instance "
            f"({target.redacted}): {reason}"
        ) from exc


def ensure_postgres_database(url: str) -> PostgresTarget:
    """Create the instance's database if the server lacks it (connecting to the server's
    `postgres` database to do so); DeploymentError naming the server when it is
    unreachable. Two machines creating it at once both succeed."""
    import psycopg2
    from psycopg2 import errors, sql

    target = PostgresTarget.parse(url)
    try:
        conn = _connect(target.url, target)
    except DeploymentError as exc:
        if f'database "{target.database}" does not exist' not in str(exc):
            raise
    else:
        conn.close()
        return target
    conn = _connect(target.with_database("postgres"), target)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
            except (errors.DuplicateDatabase, errors.UniqueViolation):
                pass  # another process created it meanwhile
            except psycopg2.Error as exc:
                raise DeploymentError(
                    f"cannot create the database {target.database!r} on {target.server}: "
                    f"{' '.join(str(exc).split())}"
                ) from exc
    finally:
        conn.close()
    return target


@contextmanager
def postgres_schema_lock(target: PostgresTarget) -> Iterator[None]:
    """Held while the instance's tables are created: dagster-postgres creates them on first
    use, and two machines doing so at once on a fresh database race (duplicate type or
    table). The Postgres counterpart of `instance.instance_lock` (an advisory lock, freed
    if the holder dies)."""
    key = int.from_bytes(hashlib.sha256(b"bms-pipeline instance schema").digest()[:8], "big")
    key -= 1 << 63 if key >= 1 << 63 else 0  # signed bigint
    conn = _connect(target.url, target)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


# -- Celery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelerySettings:
    """What the executor (in the run worker) and `bms-pipeline worker` must agree on."""

    broker: str
    backend: str

    @classmethod
    def from_env(cls) -> CelerySettings:
        return cls(
            broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER,
            backend=os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND,
        )

    @property
    def config_source(self) -> dict[str, object]:
        """Celery settings beyond dagster-celery's defaults, the same on both sides.

        Messages are acknowledged when a worker takes them (Celery's default, kept on
        purpose): a worker killed mid-step (out of memory, say) fails that step with
        WorkerLostError instead of handing the same slide to the next worker to kill it
        too; the run fails and the next run or backfill converts the slide again.
        """
        return {
            "task_acks_late": False,
            "worker_prefetch_multiplier": 1,  # a waiting step goes to whichever worker is free
            "broker_connection_retry_on_startup": True,
            "result_extended": True,
        }

    def executor_config(self) -> dict[str, object]:
        return {"broker": self.broker, "backend": self.backend, "config_source": self.config_source}


def executor_name() -> str:
    """The executor chosen by `BMS_EXECUTOR` (in_process by default); a wrong value names
    the variable and the choices."""
    name = (os.environ.get(EXECUTOR_ENV) or "in_process").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise DeploymentError(
            f"{EXECUTOR_ENV}={os.environ.get(EXECUTOR_ENV)!r}: unknown executor "
            f"(expected one of {', '.join(EXECUTORS)})"
        )
    return name
