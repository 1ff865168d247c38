"""`bms-pipeline`: the command line for people and CI (`dagster dev` remains the UI)."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from bms_pipeline.core.layout import DATA_ROOT_ENV, OUTPUT_ROOT_ENV, DataLayout
from bms_pipeline.instance import MachineBudget

logger = logging.getLogger("bms_pipeline")



def _data_root(args: argparse.Namespace) -> Path:
    """The data root; also exported (with --output-root) so worker processes see the same."""
    given = args.data_root or os.environ.get(DATA_ROOT_ENV, "data")
    if "://" in given and not given.startswith("file://"):
        raise SystemExit(
            f"error: {given}: the command line works on a local data root (it keeps the Dagster "
            "instance there); run the assets through Dagster for a data root in object storage"
        )
    root = Path(given.removeprefix("file://")).resolve()
    os.environ[DATA_ROOT_ENV] = str(root)
    out = getattr(args, "output_root", None)
    if out:
        # A URL output root (s3://, gs://...) is used as given; a path is made absolute.
        os.environ[OUTPUT_ROOT_ENV] = out if "://" in out else str(Path(out).resolve())
    return root


def dagster_instance(layout: DataLayout):
    """The persistent instance under the data root (so `dagster dev` shows the same history)."""
    from dagster import DagsterInstance

    from bms_pipeline.instance import ensure_instance_home

    home = layout.dagster_home
    ensure_instance_home(home)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    root = _data_root(args)
    started = time.perf_counter()
    if (args.width is None) != (args.height is None):
        print("error: give both --width and --height", file=sys.stderr)
        return 2
    dimensions = (args.width, args.height) if args.width is not None else None
    try:
        dataset = write_demo_dataset(
            root, slides=args.slides, seed=args.seed, size=args.size, force=args.force,
            dimensions=dimensions,
        )
    except (FileExistsError, ValueError) as exc:
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
    from bms_pipeline.core.dicomweb.config import URL_ENV, resolve_target

    try:
        target = resolve_target(args.dicomweb_url, DataLayout.at(root).collection_yaml)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    if target is not None and args.dicomweb_url:
        os.environ[URL_ENV] = target.url
    print(f"DICOMweb: {f'publishing to {target.url} ({target.source})' if target else 'not configured, nothing is published'}")
    return True


def _has_slides(root: Path) -> bool:
    slides = DataLayout.at(root).slides_dir
    if not slides.is_dir():
        print(f"error: {slides} does not exist (run `bms-pipeline demo-data`?)", file=sys.stderr)
    return slides.is_dir()


def _instance_and_defs(root: Path, workers: int | None = None):
    from bms_pipeline.definitions import build_definitions

    layout = DataLayout.at(root)
    defs = build_definitions(str(root), workers=workers, output_root=os.environ.get(OUTPUT_ROOT_ENV))
    return layout, dagster_instance(layout), defs


def _run_in_worker(root: str, workers: int, plan, force: bool):
    """One slide in a worker process, against the same persistent instance."""
    from bms_pipeline.operations import run_slide

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, instance, defs = _instance_and_defs(Path(root), workers)
    return run_slide(instance, defs, plan, force=force)


PARALLEL_MIN_BYTES = 256 << 20


def _default_jobs(todo, budget: MachineBudget) -> int:
    """Slides at once: what fits in memory, but one when the work is too small to repay
    starting worker processes (each imports Dagster and wsidicomizer, several seconds)."""
    total = sum(
        p.stat().st_size
        for plan in todo
        if plan.status is not None
        for p in [plan.status.mrxs_path, *plan.status.mrxs_path.with_suffix("").glob("*")]
    )
    return budget.concurrent_conversions if total >= PARALLEL_MIN_BYTES else 1


def cmd_run(args: argparse.Namespace) -> int:
    from bms_pipeline.operations import (
        SlideOutcome,
        plan_slides,
        register_slides,
        run_collection,
        run_slide,
    )

    root = _data_root(args)
    if not _has_slides(root):
        return 2
    if not _dicomweb_target(args, root):
        return 2
    layout, instance, defs = _instance_and_defs(root)
    wanted = set(args.slide) if args.slide else None
    plans = plan_slides(instance, defs, layout, wanted)
    if wanted:
        unknown = wanted - {p.slide_id for p in plans}
        if unknown:
            print(f"error: no such slide under {layout.slides_dir}: {sorted(unknown)}", file=sys.stderr)
            return 2
    register_slides(instance, [p.slide_id for p in plans if p.state != "not-ready"])
    outcomes: list[SlideOutcome] = []
    todo = [p for p in plans if p.state != "not-ready" and (args.force or p.needs_run)]
    for plan in plans:
        if plan.state == "not-ready":
            outcomes.append(SlideOutcome(plan.slide_id, False, error=plan.detail))
        elif plan not in todo:
            outcomes.append(SlideOutcome(plan.slide_id, True, skipped=True))
    started = time.perf_counter()
    budget = MachineBudget.detect()
    jobs = max(1, min(args.jobs or _default_jobs(todo, budget), len(todo) or 1))
    workers = max(1, budget.cores // jobs)
    print(f"{len(todo)} slide(s) to run, {jobs} at a time, {workers} wsidicomizer thread(s) each")
    if jobs == 1:
        from bms_pipeline.definitions import build_definitions

        # Same instance; definitions again only for the thread count chosen above.
        defs = build_definitions(
            str(root), workers=workers, output_root=os.environ.get(OUTPUT_ROOT_ENV)
        )
        for i, plan in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {plan.slide_id}: {plan.state} {plan.detail}".rstrip(), flush=True)
            outcomes.append(run_slide(instance, defs, plan, force=args.force))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {
                pool.submit(_run_in_worker, str(root), workers, plan, args.force): plan for plan in todo
            }
            for i, future in enumerate(as_completed(futures), 1):
                plan = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its slide only
                    outcome = SlideOutcome(plan.slide_id, False, error=f"worker crashed: {exc}")
                print(f"[{i}/{len(todo)}] {plan.slide_id}: {'ok' if outcome.ok else 'FAILED'}", flush=True)
                outcomes.append(outcome)
    if any(p.state != "not-ready" for p in plans):
        print("collection-wide tables and reports", flush=True)
        # A failed slide may have been withdrawn (publication gate): the index and clinical
        # tables are rebuilt, so nothing of it stays listed.
        refresh = args.force or any(not o.ok for o in outcomes)
        outcomes.append(run_collection(instance, defs, force=refresh))
    return _print_summary(outcomes, time.perf_counter() - started)


def cmd_status(args: argparse.Namespace) -> int:
    from bms_pipeline.operations import plan_slides

    root = _data_root(args)
    if not _has_slides(root):
        return 2
    layout, instance, defs = _instance_and_defs(root)
    plans = plan_slides(instance, defs, layout)
    for plan in plans:
        print(f"{plan.slide_id:<42} {plan.state:<11} {plan.detail}")
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.state] = counts.get(plan.state, 0) + 1
    print("\n" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 0


def _print_summary(outcomes, elapsed: float) -> int:
    from bms_pipeline.operations import COLLECTION

    print()
    print(f"{'slide':<42} {'result':<7} {'inst':>4} {'levels':>6} {'sec':>7} {'MP/s':>7}  checks / error")
    for o in outcomes:
        md = o.metadata
        checks = ", ".join(f"{name}:{'pass' if ok else 'FAIL'}" for name, ok in sorted(o.checks.items()))
        print(
            f"{o.slide_id:<42} {('fresh' if o.skipped else 'ok') if o.ok else 'FAILED':<7} {md.get('instances', '-'):>4} "
            f"{md.get('levels', '-'):>6} {md.get('seconds', '-'):>7} "
            f"{md.get('megapixels_per_second', '-'):>7}  {checks}{'  ' + o.error if o.error else ''}"
        )
    failed = [o for o in outcomes if not o.ok]
    slides = [o for o in outcomes if o.slide_id != COLLECTION]
    total_checks = sum(len(o.checks) for o in outcomes)
    failed_checks = sum(not ok for o in outcomes for ok in o.checks.values())
    collection = next((o for o in outcomes if o.slide_id == COLLECTION), None)
    print(
        f"\n{sum(o.ok for o in slides)}/{len(slides)} slides ok"
        + (f", collection tables {'ok' if collection.ok else 'FAILED'}" if collection else "")
        + f", {total_checks - failed_checks}/{total_checks} checks passed, {elapsed:.1f} s"
    )
    return 1 if failed or not outcomes else 0


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
        "--size", choices=["small", "large", "wide"], default="small",
        help="small (2,500 px), large (30,000 px square) or wide (190,528 x 14,376 px, the real width)",
    )
    demo.add_argument("--width", type=int, help="large-style slides at least this wide (px; with --height)")
    demo.add_argument("--height", type=int, help="large-style slides at least this high (px; with --width)")
    demo.add_argument("--force", action="store_true", help="replace an existing raw/ folder")
    demo.set_defaults(func=cmd_demo_data)

    run = with_root(sub.add_parser("run", help="register slides and materialize every asset with checks"))
    run.add_argument(
        "--output-root", help=f"outputs here instead of <data root>/out (or ${OUTPUT_ROOT_ENV})"
    )
    run.add_argument(
        "--dicomweb-url",
        help="publish each slide that passed its checks to this DICOMweb root by STOW-RS "
        "(or $BMS_DICOMWEB_URL, or dicomweb.url in collection.yaml; credentials from "
        "$BMS_DICOMWEB_USER/$BMS_DICOMWEB_PASSWORD or $BMS_DICOMWEB_TOKEN)",
    )
    run.add_argument("--slide", action="append", help="only this slide id (repeatable)")
    run.add_argument("--force", action="store_true", help="rematerialize even up-to-date slides")
    run.add_argument(
        "--jobs", type=int, default=None,
        help="slides converted at once (default: what fits in memory, at most the cores)",
    )
    run.set_defaults(func=cmd_run)

    status = with_root(
        sub.add_parser("status", help="which slides are missing, stale, failed or up to date")
    )
    status.add_argument("--output-root", help="as for run")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
