"""`bms-pipeline`: the command line for people and CI (`dg dev` remains the UI).

One module per command (`run`, `status`, `audit`, `demo_data`, `worker`), each adding its
own subcommand; their settings become one frozen `config.RunConfig`, handed explicitly to
the definitions, the instance and worker processes.
"""

from __future__ import annotations

import argparse
import sys

from bms_pipeline.cli import audit, demo_data, run, status, worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bms-pipeline", description="the command line for people and CI (`dg dev` is the UI)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo_data, run, status, audit, worker):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None, console_script: bool = False) -> int:
    """Run one command; `console_script`: this process ends with it (see `cli.speed`).

    Our own INFO lines; every library's INFO chatter (alembic migrations, highdicom's "copy
    attributes", dicomweb_client's requests) only with -v, which also gives Dagster's debug
    log; credentials masked in every line (`log_setup`)."""
    from bms_pipeline.cli.log_setup import configure_logging

    args = build_parser().parse_args(argv)
    args.console_script = console_script
    configure_logging(args.verbose)
    return args.func(args)


def entry() -> None:
    """The console script."""
    sys.exit(main(console_script=True))
