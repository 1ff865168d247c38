"""`bms-pipeline`: the command line for people and CI (`dagster dev` remains the UI)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV, DataLayout
from bms_pipeline.orchestration.deploy import POSTGRES_URL_ENV
from bms_pipeline.orchestration.instance import DAGSTER_LOG_LEVEL_ENV, MachineBudget, instance_home
from bms_pipeline.orchestration.preload import frozen_while_running

logger = logging.getLogger("bms_pipeline")


def _data_root(args: argparse.Namespace) -> Path:
    """The data root; also exported (with --output-root) so worker processes see the same."""
    from bms_pipeline.core.privacy.credentials import without_credentials

    given = args.data_root or os.environ.get(DATA_ROOT_ENV, "data")
    if "://" in given and not given.startswith("file://"):
        raise SystemExit(
            f"error: {without_credentials(given)}: the command line works on a local data root "
            "(it keeps the Dagster "
            "instance there); run the assets through Dagster for a data root in object storage"
        )
    root = Path(given.removeprefix("file://")).resolve()
    os.environ[DATA_ROOT_ENV] = str(root)
    postgres_url = getattr(args, "postgres_url", None)
    if postgres_url:  # exported, so worker processes open the same instance
        os.environ[POSTGRES_URL_ENV] = postgres_url
    out = getattr(args, "output_root", None)
    if out:
        # A URL output root (s3://, gs://...) is used as given; a path is made absolute.
        os.environ[OUTPUT_ROOT_ENV] = out if "://" in out else str(Path(out).resolve())
    return root


def dagster_instance(layout: DataLayout):
    """The persistent instance under the data root (so `dagster dev` shows the same history)."""
    from dagster import DagsterInstance

    from bms_pipeline.orchestration.deploy import postgres_schema_lock
    from bms_pipeline.orchestration.instance import ensure_instance_home, instance_lock

    home = instance_home(layout)
    os.environ["DAGSTER_HOME"] = str(home)
    postgres = _postgres_target()
    with instance_lock(home), postgres_schema_lock(postgres) if postgres else nullcontext():
        # Created under a lock, every storage touched once: SQLite schemas are made lazily,
        # and two processes making them at once fail (`table run_tags already exists`).
        ensure_instance_home(home, postgres=postgres is not None)
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("slides")
        instance.event_log_storage.get_concurrency_keys()
        instance.all_instigator_state()
    return instance


def _postgres_target():
    """The Postgres database of `$BMS_DAGSTER_POSTGRES_URL` / `--postgres-url`, created if
    missing, or None for the SQLite default; exit 2 naming the server if it is unreachable."""
    from bms_pipeline.orchestration.deploy import DeploymentError, ensure_postgres_database

    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        return None
    try:
        target = ensure_postgres_database(url)
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    os.environ[POSTGRES_URL_ENV] = target.dagster_url  # what dagster.yaml reads
    return target


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bms_pipeline.core.synthetic.banked import NotEnoughDiskError
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    root = _data_root(args)
    started = time.perf_counter()
    if (args.width is None) != (args.height is None):
        print("error: give both --width and --height", file=sys.stderr)
        return 2
    dimensions = (args.width, args.height) if args.width is not None else None
    try:
        dataset = write_demo_dataset(
            root,
            slides=args.slides,
            seed=args.seed,
            size=args.size,
            force=args.force,
            dimensions=dimensions,
        )
    except (FileExistsError, ValueError, NotEnoughDiskError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {len(dataset.slides)} {args.size} slides for {len(dataset.patients)} patients "
        f"to {dataset.layout.raw} in {time.perf_counter() - started:.1f} s"
    )
    for slide_id, truth in dataset.slides.items():
        w, h = truth.spec.geometry.bounds[2:]
        print(f"  {slide_id}  {w} x {h} px")
    return 0


def _dicomweb_target(args: argparse.Namespace, root: Path) -> bool:
    """Export --dicomweb-url (worker processes build the same definitions) and say where the
    slides are published, or that they are not; False on a malformed URL."""
    from bms_pipeline.core.dicomweb.config import export_target, resolve_target

    try:
        target = resolve_target(args.dicomweb_url, DataLayout.at(root).collection_yaml)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    if target is not None and (args.dicomweb_url or target.credentials):
        export_target(target)  # the URL without its user and password; those as $BMS_DICOMWEB_*
    print(
        f"DICOMweb: {f'publishing to {target.url} ({target.source})' if target else 'not configured, nothing is published'}"
    )
    return True


def _has_slides(root: Path) -> bool:
    """raw/slides exists and holds at least one slide; otherwise say what was expected."""
    slides = DataLayout.at(root).slides_dir
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


def _bms(defs: Any) -> Any:
    """The definitions' `bms` resource (every definitions this CLI builds has one)."""
    resources = defs.resources or {}
    return resources["bms"]


def _instance_and_defs(root: Path, workers: int | None = None):
    from bms_pipeline.definitions import build_definitions

    layout = DataLayout.at(root)
    defs = build_definitions(
        str(root), workers=workers, output_root=os.environ.get(OUTPUT_ROOT_ENV)
    )
    return layout, dagster_instance(layout), defs


def _run_in_worker(root: str, workers: int, plan, force: bool):
    """One slide in a worker process, against the same persistent instance."""
    from bms_pipeline.orchestration.operations import run_slide
    from bms_pipeline.orchestration.shutdown import GracefulStop

    _quiet_libraries(verbose=os.environ.get(DAGSTER_LOG_LEVEL_ENV) == "DEBUG")
    _, instance, defs = _instance_and_defs(Path(root), workers)
    stop = GracefulStop(lambda: instance, _bms(defs).layout.staging_dir).install()
    stop.current_slides.add(plan.slide_id)
    try:
        with frozen_while_running() as load_slide_steps:
            load_slide_steps()  # a worker process lives for its runs only
            return run_slide(instance, defs, plan, force=force)
    except KeyboardInterrupt:
        stop.hard_stop("interrupted")


def _default_jobs(todo, budget: MachineBudget) -> int:
    """Slides at once: what fits in memory, but one when the work is too small to repay
    starting worker processes (each imports Dagster and wsidicomizer, several seconds)."""
    total = sum(
        p.stat().st_size
        for plan in todo
        if plan.status is not None
        for p in [plan.status.mrxs_path, *plan.status.mrxs_path.with_suffix("").glob("*")]
    )
    return budget.worker_processes(total)


def _report_inputs(layout: DataLayout) -> tuple[bool, bool]:
    """Collection-level input problems, each printed once; (fatal, any)."""
    from bms_pipeline.orchestration.operations import check_collection_inputs

    problems = check_collection_inputs(layout)
    for problem in problems:
        print(f"error: {problem.message}", file=sys.stderr)
    if any(p.fatal for p in problems):
        print("nothing converted: every slide needs the inputs above", file=sys.stderr)
    return any(p.fatal for p in problems), bool(problems)


def cmd_run(args: argparse.Namespace) -> int:
    from bms_pipeline.audit_command import audit_after_run

    with ExitStack() as stack:
        code = _run_command(args, stack)
    return audit_after_run(args, code)  # blocking: no identifying value in any byte written


def _run_command(args: argparse.Namespace, stack: ExitStack) -> int:
    from bms_pipeline.console import ProgressBoard
    from bms_pipeline.orchestration.instance import (
        reap_dead_runs,
        remove_stale_outputs,
        root_run_lock,
    )
    from bms_pipeline.orchestration.operations import (
        SlideOutcome,
        plan_slides,
        register_slides,
        run_collection,
        run_slide,
    )
    from bms_pipeline.orchestration.shutdown import EXIT_INTERRUPTED, GracefulStop

    root = _data_root(args)
    if not _has_slides(root):
        return 2
    fatal, input_problems = _report_inputs(DataLayout.at(root))
    if fatal or not _dicomweb_target(args, root):
        return 2
    layout, instance, defs = _instance_and_defs(root)
    # As Dagster's own commands do: the instance is the current one while the command runs
    # (definitions resolved now read its state storage), and is disposed at its end.
    stack.enter_context(instance)
    out_layout = _bms(defs).layout
    stop = GracefulStop(lambda: instance, out_layout.staging_dir).install()
    started = time.perf_counter()
    try:
        with (
            root_run_lock(instance_home(layout), on_wait=lambda msg: print(msg, flush=True)),
            frozen_while_running() as load_slide_steps,
        ):
            for run_id in reap_dead_runs(instance):
                print(f"run {run_id}: its process is gone; marked failed, pool slots freed")
            removed = remove_stale_outputs(out_layout.out, instance)
            if removed:
                print(f"removed {len(removed)} half-written output(s) of runs that died")
            outcomes, interrupted, any_ready = _run_slides(
                args,
                root,
                layout,
                instance,
                defs,
                stop,
                SlideOutcome,
                plan_slides,
                register_slides,
                run_slide,
                ProgressBoard,
                load_slide_steps,
            )
            if outcomes is None:
                return 2
            if interrupted:
                print("stopped: runs in progress marked canceled", file=sys.stderr)
                _print_summary(outcomes, time.perf_counter() - started)
                return EXIT_INTERRUPTED
            if input_problems:
                print("collection tables skipped: see the input error(s) above", flush=True)
                outcomes.append(
                    SlideOutcome("(collection)", False, error="input error(s) reported above")
                )
            elif any_ready or withdrawn_any(outcomes):
                print("collection-wide tables and reports ...", flush=True)
                # Their versions hold the published files and patients: a converted,
                # refused or withdrawn slide makes them run, an unchanged collection not.
                outcomes.append(run_collection(instance, defs, force=args.force))
    except KeyboardInterrupt:
        stop.hard_stop("interrupted")
        return EXIT_INTERRUPTED  # hard_stop exits; this says so to the reader
    if stop.requested.is_set():
        return EXIT_INTERRUPTED
    return _print_summary(outcomes, time.perf_counter() - started)


def withdrawn_any(outcomes) -> bool:
    return any(o.withdrawn for o in outcomes)


def withdrawn_outcomes(outcomes) -> list:
    return [o for o in outcomes if o.withdrawn]


def _run_slides(
    args,
    root,
    layout,
    instance,
    defs,
    stop,
    SlideOutcome,
    plan_slides,
    register_slides,
    run_slide,
    ProgressBoard,
    load_slide_steps,
):
    """Plan, withdraw the slides that are no longer inputs, then convert what needs it
    (serially or in worker processes) with live progress. Returns (outcomes, interrupted,
    any slide ready), or (None, ...) for an unknown --slide."""
    from bms_pipeline.orchestration.operations import withdraw_removed

    wanted = set(args.slide) if args.slide else None
    plans = plan_slides(instance, defs, layout, wanted)
    if wanted:
        unknown = wanted - {p.slide_id for p in plans}
        if unknown:
            print(
                f"error: no such slide under {layout.slides_dir}: {sorted(unknown)}",
                file=sys.stderr,
            )
            return None, False, False
    register_slides(
        instance, [p.slide_id for p in plans if p.state not in ("not-ready", "skipped")]
    )
    outcomes: list = []
    if not wanted:
        for sid, why in withdraw_removed(defs, plans).items():
            print(f"{sid}: withdrawn from every output: {why}", flush=True)
            outcomes.append(SlideOutcome(sid, True, skipped=True, withdrawn=why))
    runnable = ("not-ready", "skipped")
    todo = [p for p in plans if p.state not in runnable and (args.force or p.needs_run)]
    for plan in plans:
        if plan.state == "not-ready":
            outcomes.append(SlideOutcome(plan.slide_id, False, error=plan.detail))
        elif plan.state in ("refused", "failed") and plan not in todo:
            # Rests until its inputs or the code change (`--force` tries again).
            outcomes.append(
                SlideOutcome(plan.slide_id, False, skipped=True, error=plan.detail, note=plan.state)
            )
        elif plan not in todo:
            outcomes.append(SlideOutcome(plan.slide_id, True, skipped=True))
    budget = MachineBudget.detect()
    jobs = max(1, min(args.jobs or _default_jobs(todo, budget), len(todo) or 1))
    workers = max(1, budget.cores // jobs)
    fresh = len(plans) - len(todo)
    print(
        f"{len(todo)} slide(s) to run ({fresh} already done or not ready), {jobs} at a time, "
        f"{workers} wsidicomizer thread(s) each",
        flush=True,
    )
    staging = _bms(defs).layout.staging_dir

    def detail(outcome) -> str:
        md = outcome.metadata
        if not outcome.ok:
            return (outcome.error.splitlines() or ["check failed"])[0][:60]
        if "instances" in md:
            return (
                f"{md['instances']} inst, {md['levels']} levels, converted in {md['seconds']} s "
                f"at {md['megapixels_per_second']} MP/s"
            )
        return "nothing to do" if outcome.skipped else ""

    interrupted = False
    with ProgressBoard(instance, staging, [p.slide_id for p in todo]) as board:
        if jobs == 1:
            from bms_pipeline.definitions import build_definitions

            # Same instance; definitions again only for the thread count chosen above.
            defs = build_definitions(
                str(root), workers=workers, output_root=os.environ.get(OUTPUT_ROOT_ENV)
            )
            if todo:
                load_slide_steps()  # frozen until `cmd_run` returns
            for plan in todo:
                if stop.requested.is_set():
                    interrupted = True
                    break
                stop.current_slides = {plan.slide_id}
                board.start(plan.slide_id)
                outcome = run_slide(instance, defs, plan, force=args.force)
                board.finish(plan.slide_id, outcome.ok, outcome.skipped, detail(outcome))
                outcomes.append(outcome)
            interrupted = interrupted or stop.requested.is_set()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {}
                for plan in todo:
                    futures[pool.submit(_run_in_worker, str(root), workers, plan, args.force)] = (
                        plan
                    )
                    board.start(plan.slide_id)  # queued in the pool; its run shows its stage
                for future in as_completed(futures):
                    plan = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as exc:  # noqa: BLE001 - a crashed worker fails its slide only
                        outcome = SlideOutcome(plan.slide_id, False, error=f"worker crashed: {exc}")
                    if outcome is None:
                        outcome = SlideOutcome(plan.slide_id, False, error="stopped")
                    board.finish(plan.slide_id, outcome.ok, outcome.skipped, detail(outcome))
                    outcomes.append(outcome)
                    if stop.requested.is_set():
                        pool.shutdown(wait=True, cancel_futures=True)
                        interrupted = True
                        break
    return outcomes, interrupted, any(p.state not in runnable for p in plans)


def cmd_status(args: argparse.Namespace) -> int:
    root = _data_root(args)
    if not _has_slides(root):
        return 2
    layout, instance, defs = _instance_and_defs(root)
    with instance:
        return _print_status(instance, defs, layout)


def _print_status(instance: Any, defs: Any, layout: DataLayout) -> int:
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


def _print_summary(outcomes, elapsed: float) -> int:
    """A table that fits a screen when all is well (passing checks are counted, failing
    ones named), then every fault in full: errors with every line, the values behind each
    failed check, the data warnings."""
    from bms_pipeline.orchestration.operations import COLLECTION

    print()
    print(
        f"{'slide':<38} {'result':<7} {'inst':>4} {'levels':>6} {'conv s':>7} {'MP/s':>7}  checks"
    )
    for o in outcomes:
        md = o.metadata
        failed = sorted(name for name, ok in o.checks.items() if not ok)
        checks = f"{len(o.checks) - len(failed)}/{len(o.checks)}" if o.checks else "-"
        if failed:
            checks += " FAILED: " + ", ".join(failed)
        if o.withdrawn:
            result = "gone"
        elif o.ok:
            result = "fresh" if o.skipped else "ok"
        else:
            result = o.note.upper() if o.skipped and o.note else "FAILED"
        print(
            f"{o.slide_id:<38} {result:<7} {md.get('instances', '-'):>4} "
            f"{md.get('levels', '-'):>6} {md.get('seconds', '-'):>7} "
            f"{md.get('megapixels_per_second', '-'):>7}  {checks}"
        )
    if any("seconds" in o.metadata for o in outcomes):
        print(
            "(conv s: the wsidicomizer conversion alone; a progress line's time is the slide's "
            "whole run: inventory, conversion, annotations, checks, validation)"
        )
    problems = [o for o in outcomes if o.error or o.check_details or o.warnings]
    if problems:
        print()
    for o in withdrawn_outcomes(outcomes):
        print(f"{o.slide_id}: withdrawn: {o.withdrawn}")
    for o in problems:
        for line_no, line in enumerate(o.error.splitlines()):
            print(f"{o.slide_id}: {line}" if line_no == 0 else f"    {line}")
        for name, why in sorted(o.check_details.items()):
            print(f"{o.slide_id}: check {name} failed: {why}")
        for warning in o.warnings:
            print(f"{o.slide_id}: warning: {warning}")
    failed = [o for o in outcomes if not o.ok]
    withdrawn = [o for o in outcomes if o.withdrawn]
    slides = [o for o in outcomes if o.slide_id != COLLECTION and not o.withdrawn]
    total_checks = sum(len(o.checks) for o in outcomes)
    failed_checks = sum(not ok for o in outcomes for ok in o.checks.values())
    collection = next((o for o in outcomes if o.slide_id == COLLECTION), None)
    print(
        f"\n{sum(o.ok for o in slides)}/{len(slides)} slides ok"
        + (f", {len(withdrawn)} withdrawn" if withdrawn else "")
        + (f", collection tables {'ok' if collection.ok else 'FAILED'}" if collection else "")
        + f", {total_checks - failed_checks}/{total_checks} checks passed, {elapsed:.1f} s"
    )
    return 1 if failed or not outcomes else 0


POSTGRES_HELP = (
    f"keep the Dagster instance (runs, event log, schedules) in this PostgreSQL database, "
    f"created if missing (or ${POSTGRES_URL_ENV}; default SQLite under <data root>/.dagster)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bms-pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-root", help=f"data root (default ${DATA_ROOT_ENV} or ./data)")
        return p

    demo = with_root(sub.add_parser("demo-data", help="write the synthetic BMDeep-shaped dataset"))
    demo.add_argument("--slides", type=int, default=4, help="number of slides (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--size",
        choices=["small", "large", "wide", "full"],
        default="small",
        help="small (2,500 px), large (30,000 px square), wide (190,528 x 14,376 px, the real "
        "width) or full (190,528 x 448,768 px, the largest real slides, from a bank of camera "
        "images; with --width/--height any size so written; use --slides 1)",
    )
    demo.add_argument(
        "--width", type=int, help="large-style slides at least this wide (px; with --height)"
    )
    demo.add_argument(
        "--height", type=int, help="large-style slides at least this high (px; with --width)"
    )
    demo.add_argument("--force", action="store_true", help="replace an existing raw/ folder")
    demo.set_defaults(func=cmd_demo_data)

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

    status = with_root(
        sub.add_parser("status", help="which slides are missing, stale, failed or up to date")
    )
    status.add_argument("--output-root", help="as for run")
    status.add_argument("--postgres-url", help=POSTGRES_HELP)
    status.set_defaults(func=cmd_status)

    from bms_pipeline.audit_command import add_audit_parser

    add_audit_parser(sub, with_root, POSTGRES_HELP)

    worker = sub.add_parser(
        "worker",
        help="serve steps of runs launched with BMS_EXECUTOR=celery (a Celery worker)",
        description="A Celery worker for the steps of runs that Dagster launches with "
        "BMS_EXECUTOR=celery. It needs the same BMS_DATA_ROOT, BMS_OUTPUT_ROOT, "
        "BMS_DAGSTER_POSTGRES_URL and BMS_CELERY_BROKER as the daemon.",
    )
    worker.add_argument("--name", help="worker name (default bms-<pid>)")
    worker.add_argument(
        "--scratch",
        help="this worker's own scratch folder (default $TMPDIR/bms-pipeline/worker-<name>)",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="steps at once (default 1)")
    worker.add_argument("--loglevel", default="INFO", help="Celery's log level")
    worker.set_defaults(func=cmd_worker)
    return parser


def cmd_worker(args: argparse.Namespace) -> int:
    from bms_pipeline.orchestration.workers import run_worker

    return run_worker(args.name, args.scratch, args.concurrency, args.loglevel)


def _quiet_libraries(verbose: bool) -> None:
    """Our own INFO lines; every library's INFO chatter (alembic migrations, highdicom's "copy
    attributes", dicomweb_client's requests) only with -v, which also gives Dagster's debug log;
    credentials masked in every line (`log_setup`)."""
    from bms_pipeline.log_setup import configure_logging

    configure_logging(verbose, DAGSTER_LOG_LEVEL_ENV)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    return args.func(args)


def entry() -> None:
    """The console script: `main`, then an exit without the interpreter's teardown
    (`process_exit`)."""
    from bms_pipeline.process_exit import run_then_exit

    run_then_exit(main)


if __name__ == "__main__":
    entry()
