"""What `run` prints when it ends: a table that fits a screen when all is well, then every
fault in full; and the one-line detail of each slide's progress line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bms_pipeline.orchestration.operations import SlideRunResult


def progress_detail(outcome: SlideRunResult) -> str:
    """The end of a slide's progress line: its first error, or what the conversion did."""
    md = outcome.metadata
    if not outcome.ok:
        return (outcome.error.splitlines() or ["check failed"])[0][:60]
    if "instances" in md:
        return (
            f"{md['instances']} inst, {md['levels']} levels, converted in {md['seconds']} s "
            f"at {md['megapixels_per_second']} MP/s"
        )
    return "nothing to do" if outcome.skipped else ""


def _result(o: SlideRunResult) -> str:
    if o.withdrawn:
        return "gone"
    if o.ok:
        return "fresh" if o.skipped else "ok"
    return o.note.upper() if o.skipped and o.note else "FAILED"


def _print_table(outcomes: list[SlideRunResult]) -> None:
    """One row per slide (passing checks counted, failing ones named)."""
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
        print(
            f"{o.slide_id:<38} {_result(o):<7} {md.get('instances', '-'):>4} "
            f"{md.get('levels', '-'):>6} {md.get('seconds', '-'):>7} "
            f"{md.get('megapixels_per_second', '-'):>7}  {checks}"
        )
    if any("seconds" in o.metadata for o in outcomes):
        print(
            "(conv s: the wsidicomizer conversion alone; a progress line's time is the slide's "
            "whole run: inventory, conversion, annotations, checks, validation)"
        )


def _print_faults(outcomes: list[SlideRunResult]) -> None:
    """Errors with every line, the values behind each failed check, the data warnings."""
    problems = [o for o in outcomes if o.error or o.check_details or o.warnings]
    if problems:
        print()
    for o in outcomes:
        if o.withdrawn:
            print(f"{o.slide_id}: withdrawn: {o.withdrawn}")
    for o in problems:
        for line_no, line in enumerate(o.error.splitlines()):
            print(f"{o.slide_id}: {line}" if line_no == 0 else f"    {line}")
        for name, why in sorted(o.check_details.items()):
            print(f"{o.slide_id}: check {name} failed: {why}")
        for warning in o.warnings:
            print(f"{o.slide_id}: warning: {warning}")


def print_summary(outcomes: list[SlideRunResult], elapsed: float) -> int:
    """The table, every fault, then one line of totals; the exit code (1 if anything failed
    or nothing was done)."""
    from bms_pipeline.orchestration.operations import COLLECTION

    _print_table(outcomes)
    _print_faults(outcomes)
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
