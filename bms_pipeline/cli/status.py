"""`bms-pipeline status`: each slide's state and why (the decision `run` would act on), the
slides to withdraw, the collection-wide assets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bms_pipeline.cli.config import (
    POSTGRES_HELP,
    build_definitions_for,
    config_or_exit,
    has_slides,
    open_instance,
    with_root,
)

if TYPE_CHECKING:
    import dagster as dg

    from bms_pipeline.core.layout import DataLayout


def add_parser(sub: Any) -> None:
    status = with_root(
        sub.add_parser("status", help="which slides are missing, stale, failed or up to date")
    )
    status.add_argument("--output-root", help="as for run")
    status.add_argument("--postgres-url", help=POSTGRES_HELP)
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    config = config_or_exit(args)
    if not has_slides(config):
        return 2
    instance = open_instance(config)
    defs = build_definitions_for(config)
    with instance:
        return print_status(instance, defs, config.layout)


def print_status(instance: dg.DagsterInstance, defs: dg.Definitions, layout: DataLayout) -> int:
    from bms_pipeline.orchestration.operations import (
        collection_states,
        pending_withdrawals,
        plan_slides,
    )

    plans = plan_slides(instance, defs, layout)
    for plan in plans:
        print(f"{plan.slide_id:<42} {plan.state:<11} {plan.detail}")
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.state] = counts.get(plan.state, 0) + 1
    for sid, why in pending_withdrawals(defs, plans).items():
        print(f"{sid:<42} {'withdraw':<11} {why}")
        counts["to withdraw"] = counts.get("to withdraw", 0) + 1
    print("\n" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print("\ncollection assets:")
    for name, state in collection_states(instance, defs):
        print(f"  {name:<40} {state}")
    return 0
