"""`bms-pipeline run`: register the slides, run what the decision names (`core.run_decision`,
through `orchestration.operations`), serially or in worker processes, with live progress,
then the collection-wide tables, a summary and the privacy audit."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bms_pipeline.cli.config import (
    POSTGRES_HELP,
    ConfigError,
    RunConfig,
    build_definitions_for,
    config_or_exit,
    has_slides,
    open_instance,
    with_root,
)
from bms_pipeline.cli.speed import RunSpeedups, run_speedups
from bms_pipeline.core.layout import OUTPUT_ROOT_ENV, DataLayout

if TYPE_CHECKING:
    import dagster as dg

    from bms_pipeline.cli.console import ProgressBoard
    from bms_pipeline.orchestration.operations import PlannedSlide, SlideRunResult
    from bms_pipeline.orchestration.shutdown import GracefulStop

NOT_RUNNABLE = ("not-ready", "skipped")


def add_parser(sub: Any) -> None:
    run = with_root(
        sub.add_parser("run", help="register slides and materialize every asset with checks")
    )
    run.add_argument(
        "--output-root", help=f"outputs here instead of <data root>/out (or ${OUTPUT_ROOT_ENV})"
    )
    run.add_argument(
        "--dicomweb-url",
        help="publish each slide that passed its checks to this DICOMweb root by STOW-RS "
        "(or $BMS_DICOMWEB_URL, or dicomweb.url in collection.yaml; credentials from "
        "$BMS_DICOMWEB_USER/$BMS_DICOMWEB_PASSWORD or $BMS_DICOMWEB_TOKEN)",
    )
    run.add_argument("--postgres-url", help=POSTGRES_HELP)
    run.add_argument("--slide", action="append", help="only this slide id (repeatable)")
    run.add_argument("--force", action="store_true", help="rematerialize even up-to-date slides")
    run.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="slides converted at once (default: what fits in memory, at most the cores)",
    )
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from bms_pipeline.cli.audit import audit_after_run

    config = config_or_exit(args)
    with run_speedups(console_script=getattr(args, "console_script", False)) as speed:
        with ExitStack() as stack:
            code, config = _run_command(config, stack, speed)
        # Blocking: no identifying value in any byte written.
        return speed.exit_with(audit_after_run(config, code))


def bms_of(defs: dg.Definitions) -> Any:
    """The definitions' `bms` resource (every definitions this CLI builds has one)."""
    return (defs.resources or {})["bms"]


def _report_inputs(layout: DataLayout) -> tuple[bool, bool]:
    """Collection-level input problems, each printed once; (fatal, any)."""
    from bms_pipeline.orchestration.operations import check_collection_inputs

    problems = check_collection_inputs(layout)
    for problem in problems:
        print(f"error: {problem.message}", file=sys.stderr)
    if any(p.fatal for p in problems):
        print("nothing converted: every slide needs the inputs above", file=sys.stderr)
    return any(p.fatal for p in problems), bool(problems)


def _with_dicomweb(config: RunConfig) -> RunConfig | None:
    """The configuration with its DICOMweb target, said where the slides are published (or
    that they are not); None on a malformed URL."""
    try:
        config = config.with_dicomweb()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    target = config.dicomweb
    print(
        f"DICOMweb: {f'publishing to {target.url} ({target.source})' if target else 'not configured, nothing is published'}"
    )
    return config


@dataclass
class SlidesDone:
    """What the slides of a run came to."""

    outcomes: list[SlideRunResult]
    interrupted: bool
    any_ready: bool
    """A slide was ready (converted, fresh, refused or failed), not only missing inputs."""


def _run_command(config: RunConfig, stack: ExitStack, speed: RunSpeedups) -> tuple[int, RunConfig]:
    """The run; its exit code and the configuration it ran with (DICOMweb target resolved)."""
    from bms_pipeline.cli.summary import print_summary
    from bms_pipeline.orchestration.instance import instance_home, root_run_lock
    from bms_pipeline.orchestration.shutdown import EXIT_INTERRUPTED, GracefulStop

    if not has_slides(config):
        return 2, config
    fatal, input_problems = _report_inputs(config.layout)
    checked = None if fatal else _with_dicomweb(config)
    if checked is None:
        return 2, config
    config = checked
    instance = open_instance(config)
    defs = build_definitions_for(config)
    # As Dagster's own commands do: the instance is the current one while the command runs
    # (definitions resolved now read its state storage), and is disposed at its end.
    stack.enter_context(instance)
    stop = GracefulStop(lambda: instance, bms_of(defs).layout.staging_dir).install()
    stack.callback(stop.uninstall)
    started = time.perf_counter()
    home = instance_home(config.layout)
    try:
        with root_run_lock(home, on_wait=lambda msg: print(msg, flush=True)):
            _clean_up_after_dead_runs(instance, bms_of(defs).layout.out)
            done = _run_slides(config, instance, defs, stop, speed)
            if done is None:
                return 2, config
            if done.interrupted:
                print("stopped: runs in progress marked canceled", file=sys.stderr)
                print_summary(done.outcomes, time.perf_counter() - started)
                return EXIT_INTERRUPTED, config
            _run_collection(config, instance, defs, done, input_problems)
    except KeyboardInterrupt:
        stop.hard_stop("interrupted")
        return EXIT_INTERRUPTED, config  # hard_stop exits; this says so to the reader
    if stop.requested.is_set():
        return EXIT_INTERRUPTED, config
    return print_summary(done.outcomes, time.perf_counter() - started), config


def _clean_up_after_dead_runs(instance: dg.DagsterInstance, out: Any) -> None:
    from bms_pipeline.defs.runs import reap_dead_runs
    from bms_pipeline.orchestration.instance import remove_stale_outputs

    for run_id in reap_dead_runs(instance):
        print(f"run {run_id}: its process is gone; marked failed, pool slots freed")
    removed = remove_stale_outputs(out, instance)
    if removed:
        print(f"removed {len(removed)} half-written output(s) of runs that died")


def _run_collection(
    config: RunConfig,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    done: SlidesDone,
    input_problems: bool,
) -> None:
    """The collection-wide tables and reports, when the decision says they are due (their
    versions hold the published files and patients: which of them run is decided there)."""
    from bms_pipeline.core.run_decision import collection_build_due
    from bms_pipeline.orchestration.operations import SlideRunResult, run_collection

    if input_problems:
        print("collection tables skipped: see the input error(s) above", flush=True)
        done.outcomes.append(
            SlideRunResult("(collection)", False, error="input error(s) reported above")
        )
    elif collection_build_due(done.any_ready, any(o.withdrawn for o in done.outcomes)):
        print("collection-wide tables and reports ...", flush=True)
        done.outcomes.append(
            run_collection(instance, defs, force=config.force, log_level=config.dagster_log_level)
        )


def _plan(
    config: RunConfig, instance: dg.DagsterInstance, defs: dg.Definitions
) -> tuple[list[PlannedSlide], list[SlideRunResult]] | None:
    """Every slide's plan, and the outcomes known without running: the slides withdrawn
    (no longer inputs), not ready, resting or fresh. None for an unknown --slide."""
    from bms_pipeline.orchestration.operations import (
        SlideRunResult,
        plan_slides,
        register_slides,
        withdraw_removed,
    )

    wanted = set(config.slides) or None
    layout = config.layout
    plans = plan_slides(instance, defs, layout, wanted)
    unknown = (wanted or set()) - {p.slide_id for p in plans}
    if unknown:
        print(f"error: no such slide under {layout.slides_dir}: {sorted(unknown)}", file=sys.stderr)
        return None
    register_slides(instance, [p.slide_id for p in plans if p.state not in NOT_RUNNABLE])
    outcomes: list[SlideRunResult] = []
    if not wanted:
        for sid, why in withdraw_removed(defs, plans).items():
            print(f"{sid}: withdrawn from every output: {why}", flush=True)
            outcomes.append(SlideRunResult(sid, True, skipped=True, withdrawn=why))
    for plan in plans:
        if plan.state == "not-ready":
            outcomes.append(SlideRunResult(plan.slide_id, False, error=plan.detail))
        elif _to_run(config, plan):
            continue
        elif plan.state in ("refused", "failed"):
            # Rests until its inputs or the code change (`--force` tries again).
            outcomes.append(
                SlideRunResult(
                    plan.slide_id, False, skipped=True, error=plan.detail, note=plan.state
                )
            )
        else:
            outcomes.append(SlideRunResult(plan.slide_id, True, skipped=True))
    return plans, outcomes


def _to_run(config: RunConfig, plan: PlannedSlide) -> bool:
    return plan.state not in NOT_RUNNABLE and (config.force or plan.needs_run)


def _input_bytes(todo: list[PlannedSlide]) -> int:
    """The size of the slides to run (their .mrxs and data files)."""
    return sum(
        p.stat().st_size
        for plan in todo
        if plan.status is not None
        for p in [plan.status.mrxs_path, *plan.status.mrxs_path.with_suffix("").glob("*")]
    )


def _run_slides(
    config: RunConfig,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    stop: GracefulStop,
    speed: RunSpeedups,
) -> SlidesDone | None:
    """Plan, withdraw the slides that are no longer inputs, then convert what needs it
    (serially or in worker processes, as the machine budget says) with live progress.
    None for an unknown --slide."""
    from bms_pipeline.cli.console import ProgressBoard
    from bms_pipeline.core.budget import MachineBudget

    planned = _plan(config, instance, defs)
    if planned is None:
        return None
    plans, outcomes = planned
    todo = [p for p in plans if _to_run(config, p)]
    shape = MachineBudget.detect().run_shape(_input_bytes(todo), len(todo), config.jobs)
    config = replace(config, threads_per_conversion=shape.threads_per_conversion)
    print(
        f"{len(todo)} slide(s) to run ({len(plans) - len(todo)} already done or not ready), "
        f"{shape.slides_at_once} at a time, "
        f"{shape.threads_per_conversion} wsidicomizer thread(s) each",
        flush=True,
    )
    with ProgressBoard(
        instance, bms_of(defs).layout.staging_dir, [p.slide_id for p in todo]
    ) as board:
        if shape.slides_at_once == 1:
            interrupted = _convert_here(config, instance, todo, stop, speed, board, outcomes)
        else:
            interrupted = _convert_in_workers(
                config, todo, shape.slides_at_once, stop, board, outcomes
            )
    return SlidesDone(outcomes, interrupted, any(p.state not in NOT_RUNNABLE for p in plans))


def _convert_here(
    config: RunConfig,
    instance: dg.DagsterInstance,
    todo: list[PlannedSlide],
    stop: GracefulStop,
    speed: RunSpeedups,
    board: ProgressBoard,
    outcomes: list[SlideRunResult],
) -> bool:
    """Each slide in turn in this process; True when a stop signal ended the loop."""
    from bms_pipeline.cli.summary import progress_detail
    from bms_pipeline.orchestration.operations import run_slide

    # Same instance; definitions again only for the thread count the budget chose.
    defs = build_definitions_for(config)
    if todo:
        speed.load_slide_steps()  # frozen until the command returns
    for plan in todo:
        if stop.requested.is_set():
            return True
        stop.current_slides = {plan.slide_id}
        board.start(plan.slide_id)
        outcome = run_slide(
            instance, defs, plan, force=config.force, log_level=config.dagster_log_level
        )
        board.finish(plan.slide_id, outcome.ok, outcome.skipped, progress_detail(outcome))
        outcomes.append(outcome)
    return stop.requested.is_set()


def _convert_in_workers(
    config: RunConfig,
    todo: list[PlannedSlide],
    jobs: int,
    stop: GracefulStop,
    board: ProgressBoard,
    outcomes: list[SlideRunResult],
) -> bool:
    """The slides in `jobs` worker processes, each given the configuration; True when a stop
    signal ended the pool."""
    from bms_pipeline.cli.summary import progress_detail
    from bms_pipeline.orchestration.operations import SlideRunResult

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {}
        for plan in todo:
            futures[pool.submit(run_in_worker, config, plan)] = plan
            board.start(plan.slide_id)  # queued in the pool; its run shows its stage
        for future in as_completed(futures):
            plan = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a crashed worker fails its slide only
                outcome = SlideRunResult(plan.slide_id, False, error=f"worker crashed: {exc}")
            if outcome is None:
                outcome = SlideRunResult(plan.slide_id, False, error="stopped")
            board.finish(plan.slide_id, outcome.ok, outcome.skipped, progress_detail(outcome))
            outcomes.append(outcome)
            if stop.requested.is_set():
                pool.shutdown(wait=True, cancel_futures=True)
                return True
    return False


def run_in_worker(config: RunConfig, plan: PlannedSlide) -> SlideRunResult | None:
    """One slide in a worker process, configured by `config` alone (the parent's settings,
    DICOMweb credentials included, travel in it: nothing through the environment), against
    the same persistent instance."""
    from bms_pipeline.cli.log_setup import configure_logging
    from bms_pipeline.core.privacy.credentials import remember_secret
    from bms_pipeline.orchestration.operations import run_slide
    from bms_pipeline.orchestration.shutdown import GracefulStop

    configure_logging(config.verbose)
    credentials = config.dicomweb.credentials if config.dicomweb else None
    if credentials is not None:  # masked in this process's logs too
        remember_secret(credentials.password)
        remember_secret(f"{credentials.user}:{credentials.password}")
    instance = open_instance(config)
    defs = build_definitions_for(config)
    stop = GracefulStop(lambda: instance, bms_of(defs).layout.staging_dir).install()
    stop.current_slides.add(plan.slide_id)
    try:
        with run_speedups() as speed:
            speed.load_slide_steps()  # a worker process lives for its runs only
            return run_slide(
                instance, defs, plan, force=config.force, log_level=config.dagster_log_level
            )
    except KeyboardInterrupt:
        stop.hard_stop("interrupted")
        return None
