"""`bms-pipeline worker`: a Celery worker for the steps of runs launched with
`BMS_EXECUTOR=celery` (`orchestration.workers`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bms_pipeline.cli.config import POSTGRES_HELP
from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV
from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV


def add_parser(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="serve steps of runs launched with BMS_EXECUTOR=celery (a Celery worker)",
        description="A Celery worker for the steps of runs that Dagster launches with "
        "BMS_EXECUTOR=celery. It needs the same BMS_DATA_ROOT, BMS_OUTPUT_ROOT, "
        "BMS_DAGSTER_POSTGRES_URL and BMS_CELERY_BROKER as the daemon (or the options below).",
    )
    worker.add_argument("--data-root", help=f"data root, a path or URL (default ${DATA_ROOT_ENV})")
    worker.add_argument("--output-root", help=f"as the daemon's (default ${OUTPUT_ROOT_ENV})")
    worker.add_argument("--postgres-url", help=POSTGRES_HELP)
    worker.add_argument("--name", help="worker name (default bms-<pid>)")
    worker.add_argument(
        "--scratch",
        help="this worker's own scratch folder (default $TMPDIR/bms-pipeline/worker-<name>)",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="steps at once (default 1)")
    worker.add_argument("--loglevel", default="INFO", help="Celery's log level")
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from bms_pipeline.orchestration.workers import (
        WorkerSettings,
        default_worker_scratch,
        run_worker,
    )

    env = os.environ  # the documented variables, read here as the options' defaults
    data_root = args.data_root or env.get(DATA_ROOT_ENV)
    if not data_root:
        print(
            f"error: ${DATA_ROOT_ENV} is not set: a worker builds the same definitions as the "
            "runs it serves, so it needs the same data root (and $BMS_OUTPUT_ROOT)",
            file=sys.stderr,
        )
        return 2
    name = args.name or f"bms-{os.getpid()}"
    settings = WorkerSettings(
        data_root=data_root,
        output_root=args.output_root or env.get(OUTPUT_ROOT_ENV) or None,
        postgres_url=args.postgres_url or env.get(POSTGRES_URL_ENV) or None,
        scratch=Path(args.scratch) if args.scratch else default_worker_scratch(name),
    )
    return run_worker(settings, name, args.concurrency, args.loglevel, inherited=env)
