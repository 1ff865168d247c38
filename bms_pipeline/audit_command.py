"""`bms-pipeline audit` and the privacy audit that ends every `run` (the logic is
`core.privacy.audit`; this wires the command line's settings to it and prints the verdict)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_LEAK = 3
"""`audit` found an identifying value somewhere (distinct from 1, a failed slide)."""


def _urls(args: argparse.Namespace) -> dict[str, str]:
    """Every URL that may carry credentials, by the setting that gave it."""
    from bms_pipeline.core.dicomweb.config import URL_ENV
    from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV

    urls: dict[str, str] = {}
    if getattr(args, "dicomweb_url", None):
        urls["--dicomweb-url"] = args.dicomweb_url
    if getattr(args, "postgres_url", None):
        urls["--postgres-url"] = args.postgres_url
    for name in (URL_ENV, POSTGRES_URL_ENV):
        if os.environ.get(name):
            urls.setdefault(f"${name}", os.environ[name])
    return urls


def _postgres() -> tuple[str, str] | None:
    """The PostgreSQL instance (SQLAlchemy URL, name without password), if one is set."""
    from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV, PostgresTarget

    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        return None
    target = PostgresTarget.parse(url)
    return target.dagster_url, f"PostgreSQL {target.redacted}"


def audit(args: argparse.Namespace, root: Path, full: bool = True) -> int:
    """Audit the data root; print the summary and every hit by place (0 clean, EXIT_LEAK)."""
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.core.privacy.audit import audit_layout
    from bms_pipeline.orchestration.instance import instance_home

    output_root = getattr(args, "output_root", None) or os.environ.get("BMS_OUTPUT_ROOT")
    if output_root and "://" in output_root and not output_root.startswith("file://"):
        print(
            "privacy audit: the output root is not a local folder; only the instance is audited",
            file=sys.stderr,
        )
        output_root = None
    layout = DataLayout.at(root, output_root.removeprefix("file://") if output_root else None)
    report = audit_layout(
        layout, instance_home(DataLayout.at(root)), _urls(args), _postgres(), full=full
    )
    for warning in report.warnings:
        print(f"privacy audit: warning: {warning}", file=sys.stderr)
    for hit in report.hits:
        print(f"privacy audit: LEAK: {hit.describe()}", file=sys.stderr)
    print(report.summary(), flush=True)
    return 0 if report.clean else EXIT_LEAK


def cmd_audit(args: argparse.Namespace) -> int:
    from bms_pipeline.cli import _data_root

    return audit(args, _data_root(args), full=not args.incremental)


def audit_after_run(args: argparse.Namespace, code: int) -> int:
    """The blocking step that ends `run`: a run whose slides all passed still fails (exit
    EXIT_LEAK) if any identifying value of the inputs is found anywhere it wrote. Skipped
    when the run did not start (2) or was interrupted."""
    from bms_pipeline.core.layout import DATA_ROOT_ENV

    if code not in (0, 1) or DATA_ROOT_ENV not in os.environ:
        return code

    # Files found clean before and unchanged since are not read again (see ScanCache).
    verdict = audit(args, Path(os.environ[DATA_ROOT_ENV]), full=False)
    return code or verdict


def add_audit_parser(sub, with_root, postgres_help: str) -> None:
    """The `audit` subcommand."""
    parser = with_root(
        sub.add_parser(
            "audit",
            help="search every byte of the outputs and the Dagster instance for identifying "
            "values of the inputs (MIRAX properties outside the allow-list, free-text clinical "
            "and lab cells, credentials); hits are named by place, never by value",
        )
    )
    parser.add_argument("--output-root", help="as for run")
    parser.add_argument("--postgres-url", help=postgres_help)
    parser.add_argument(
        "--dicomweb-url", help="also search for this URL's user and password (as given to run)"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="skip files found clean by an earlier audit against the same values and "
        "unchanged since (as the audit that ends `run` does); default: read every byte",
    )
    parser.set_defaults(func=cmd_audit)
