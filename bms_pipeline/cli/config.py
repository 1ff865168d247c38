"""The command line's settings: read once from the arguments (documented environment
variables as their defaults) into a frozen `RunConfig`, then handed explicitly to the
definitions, the Dagster instance and every worker process. Nothing here writes
`os.environ`: the process configures itself through arguments, never through its own
environment."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV, DataLayout
from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV

if TYPE_CHECKING:
    import dagster as dg

    from bms_pipeline.core.dicomweb.config import DicomwebTarget
    from bms_pipeline.orchestration.deploy import PostgresTarget


class ConfigError(ValueError):
    """A setting the command cannot work with (printed as `error: ...`, exit 2)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a command (and each of its worker processes) is configured by."""

    data_root: Path
    """The local data root (collection.yaml, raw/, the Dagster instance in .dagster)."""
    output_root: str | None = None
    """Outputs here instead of <data root>/out: an absolute path or a URL."""
    postgres_url: str | None = field(default=None, repr=False)
    """The Dagster instance's PostgreSQL database (may hold a password), or None: SQLite."""
    dicomweb: DicomwebTarget | None = None
    """Where `run` publishes (resolved once: `core.dicomweb.config.resolve_target`)."""
    dicomweb_url: str | None = field(default=None, repr=False)
    """`--dicomweb-url` as given, for the audit's list of credentials to search for."""
    verbose: bool = False
    force: bool = False
    slides: tuple[str, ...] = ()
    """Only these slide ids (empty: every slide)."""
    jobs: int | None = None
    """Slides converted at once (None: the machine budget decides)."""
    threads_per_conversion: int | None = None
    """wsidicomizer threads per conversion (None: the budget beside the pool's runs)."""

    @property
    def layout(self) -> DataLayout:
        """The data root's layout: its inputs, and its outputs when they are local (an output
        root in object storage is mirrored by the `bms` resource; the CLI reads only its
        inputs here). Built from this configuration alone, never from the environment."""
        out = self.output_root.removeprefix("file://") if self.output_root else None
        local = out if out and "://" not in out else None
        return DataLayout.at(self.data_root, local or self.data_root / "out")

    @property
    def dagster_log_level(self) -> str:
        """Dagster's console log in the runs the command executes: its debug log with -v,
        otherwise nothing (its events stay in the instance for the UI)."""
        return "DEBUG" if self.verbose else "CRITICAL"

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> RunConfig:
        """The settings of `args`, each missing one from its documented environment variable
        (`$BMS_DATA_ROOT`, `$BMS_OUTPUT_ROOT`, `$BMS_DAGSTER_POSTGRES_URL`), read here only."""
        from bms_pipeline.core.privacy.credentials import without_credentials

        given = getattr(args, "data_root", None) or env.get(DATA_ROOT_ENV) or "data"
        if "://" in given and not given.startswith("file://"):
            raise ConfigError(
                f"{without_credentials(given)}: the command line works on a local data root "
                "(it keeps the Dagster instance there); run the assets through Dagster for a "
                "data root in object storage"
            )
        out = getattr(args, "output_root", None) or env.get(OUTPUT_ROOT_ENV) or None
        if out and "://" not in out:
            out = str(Path(out).resolve())  # a URL output root (s3://, gs://...) as given
        jobs = getattr(args, "jobs", None)
        return cls(
            data_root=Path(given.removeprefix("file://")).resolve(),
            output_root=out,
            postgres_url=getattr(args, "postgres_url", None) or env.get(POSTGRES_URL_ENV) or None,
            dicomweb_url=getattr(args, "dicomweb_url", None),
            verbose=bool(getattr(args, "verbose", False)),
            force=bool(getattr(args, "force", False)),
            slides=tuple(getattr(args, "slide", None) or ()),
            jobs=jobs,
        )

    def with_dicomweb(self, env: Mapping[str, str] = os.environ) -> RunConfig:
        """This configuration with its DICOMweb target resolved (`--dicomweb-url`, else
        `$BMS_DICOMWEB_URL`, else collection.yaml); ConfigError on a malformed URL."""
        from dataclasses import replace

        from bms_pipeline.core.dicomweb.config import resolve_target

        try:
            target = resolve_target(self.dicomweb_url, self.layout.collection_yaml, env=env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return replace(self, dicomweb=target)


def config_or_exit(args: argparse.Namespace) -> RunConfig:
    """`RunConfig.from_args`, or exit 2 with the reason."""
    try:
        return RunConfig.from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def postgres_target(config: RunConfig) -> PostgresTarget | None:
    """The Postgres database of the configuration, created if missing, or None for the
    SQLite default; exit 2 naming the server if it is unreachable."""
    from bms_pipeline.orchestration.deploy import DeploymentError, ensure_postgres_database

    if not config.postgres_url:
        return None
    try:
        return ensure_postgres_database(config.postgres_url)
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def open_instance(config: RunConfig) -> dg.DagsterInstance:
    """The persistent instance under the data root (so `dg dev` shows the same history),
    opened from its folder, not from `$DAGSTER_HOME`."""
    from bms_pipeline.orchestration.deploy import postgres_schema_lock
    from bms_pipeline.orchestration.instance import (
        ensure_instance_home,
        instance_home,
        instance_lock,
    )

    home = instance_home(config.layout)
    postgres = postgres_target(config)
    with instance_lock(home), postgres_schema_lock(postgres) if postgres else nullcontext():
        # Created under a lock, every storage touched once: SQLite schemas are made lazily,
        # and two processes making them at once fail (`table run_tags already exists`).
        ensure_instance_home(home, postgres=postgres is not None)
        instance = instance_at(home, postgres)
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("slides")
        instance.event_log_storage.get_concurrency_keys()
        instance.all_instigator_state()
    return instance


def instance_at(home: Path, postgres: PostgresTarget | None = None) -> dg.DagsterInstance:
    """The instance of `home`'s dagster.yaml. With Postgres, its URL is given to the storage
    directly (the written dagster.yaml names `$BMS_DAGSTER_POSTGRES_URL`, which `dg dev` and
    the daemon read; the URL may hold a password, so it is never written to disk, and this
    process does not put it in its own environment either). `InstanceRef.from_dir` with
    `overrides` is Dagster's documented instance internals (no top-level export)."""
    import dagster as dg

    if postgres is None:
        return dg.DagsterInstance.from_config(str(home))
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(
        str(home), overrides={"storage": {"postgres": {"postgres_url": postgres.dagster_url}}}
    )
    return dg.DagsterInstance.from_ref(ref)


def build_definitions_for(config: RunConfig) -> dg.Definitions:
    """The definitions of this configuration: its roots, threads and DICOMweb target."""
    from bms_pipeline.definitions import build_definitions

    return build_definitions(
        str(config.data_root),
        workers=config.threads_per_conversion,
        output_root=config.output_root,
        dicomweb=config.dicomweb,
    )


def has_slides(config: RunConfig) -> bool:
    """raw/slides exists and holds at least one slide; otherwise say what was expected."""
    slides = config.layout.slides_dir
    if not slides.is_dir():
        print(f"error: {slides} does not exist (run `bms-pipeline demo-data`?)", file=sys.stderr)
        return False
    if not any(slides.glob("*.mrxs")):
        print(
            f"error: {slides} holds no slides: expected <slide_id>.mrxs files, each with its "
            "<slide_id>/ folder of Slidedat.ini, Index.dat and Data*.dat",
            file=sys.stderr,
        )
        return False
    return True


POSTGRES_HELP = (
    f"keep the Dagster instance (runs, event log, schedules) in this PostgreSQL database, "
    f"created if missing (or ${POSTGRES_URL_ENV}; default SQLite under <data root>/.dagster)"
)


def with_root(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data-root", help=f"data root (default ${DATA_ROOT_ENV} or ./data)")
    return parser
