"""`bms-pipeline audit` and the privacy audit that ends every `run` (the logic is
`core.privacy.audit`; this wires the command line's settings to it and prints the verdict)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bms_pipeline.cli.config import POSTGRES_HELP, RunConfig, config_or_exit, with_root

if TYPE_CHECKING:
    from bms_pipeline.core.privacy.credentials import Credentials

EXIT_LEAK = 3
"""`audit` found an identifying value somewhere (distinct from 1, a failed slide)."""


def _urls(config: RunConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Every URL that may carry credentials, by the setting that gave it."""
    from bms_pipeline.core.dicomweb.config import URL_ENV
    from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV

    urls: dict[str, str] = {}
    if config.dicomweb_url:
        urls["--dicomweb-url"] = config.dicomweb_url
    if config.postgres_url and config.postgres_url != env.get(POSTGRES_URL_ENV):
        urls["--postgres-url"] = config.postgres_url
    for name in (URL_ENV, POSTGRES_URL_ENV):
        if env.get(name):
            urls.setdefault(f"${name}", env[name])
    target = config.dicomweb  # `run`'s resolved target: credentials of collection.yaml's URL
    if target is not None and target.credentials is not None:
        urls.setdefault(target.source, _with_credentials(target.url, target.credentials))
    return urls


def _with_credentials(url: str, credentials: Credentials) -> str:
    """`url` with `user:password@` again, for the audit to search for them."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo = f"{quote(credentials.user, safe='')}:{quote(credentials.password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def _postgres(config: RunConfig) -> tuple[str, str] | None:
    """The PostgreSQL instance (SQLAlchemy URL, name without password), if one is set."""
    from bms_pipeline.orchestration.deploy import PostgresTarget

    if not config.postgres_url:
        return None
    target = PostgresTarget.parse(config.postgres_url)
    return target.dagster_url, f"PostgreSQL {target.redacted}"


def audit(config: RunConfig, full: bool = True, env: Mapping[str, str] = os.environ) -> int:
    """Audit the data root; print the summary and every hit by place (0 clean, EXIT_LEAK)."""
    from bms_pipeline.core.privacy.audit import audit_layout
    from bms_pipeline.orchestration.instance import instance_home

    output_root = config.output_root
    if output_root and "://" in output_root and not output_root.startswith("file://"):
        print(
            "privacy audit: the output root is not a local folder; only the instance is audited",
            file=sys.stderr,
        )
    layout = config.layout
    report = audit_layout(
        layout, instance_home(layout), _urls(config, env), _postgres(config), full=full
    )
    for warning in report.warnings:
        print(f"privacy audit: warning: {warning}", file=sys.stderr)
    for hit in report.hits:
        print(f"privacy audit: LEAK: {hit.describe()}", file=sys.stderr)
    print(report.summary(), flush=True)
    return 0 if report.clean else EXIT_LEAK


def cmd_audit(args: argparse.Namespace) -> int:
    return audit(config_or_exit(args), full=not args.incremental)


def audit_after_run(config: RunConfig, code: int) -> int:
    """The blocking step that ends `run`: a run whose slides all passed still fails (exit
    EXIT_LEAK) if any identifying value of the inputs is found anywhere it wrote. Skipped
    when the run did not start (2) or was interrupted."""
    if code not in (0, 1):
        return code
    # Files found clean before and unchanged since are not read again (see ScanCache).
    verdict = audit(config, full=False)
    return code or verdict


def add_parser(sub: Any) -> None:
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
    parser.add_argument("--postgres-url", help=POSTGRES_HELP)
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
