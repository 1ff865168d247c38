"""What each slide needs (status) and running exactly that, shared by the CLI and tests.

A slide is up to date when its MIRAX inventory matches the files on disk and Dagster
reports every slide asset FRESH (no code-version change, no newer upstream data version).
So a second `run` converts nothing, a code change marks every slide stale, and a changed
slide marks only itself stale.
"""

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg

from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.discovery import SlideStatus, scan_slides
from bms_pipeline.defs.partitions import (
    INVENTORY_KEY,
    SLIDES_PARTITIONS,
    recorded_signature,
    slides_partitions,
)
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.orchestration.staleness import Staleness

SlideState = Literal["not-ready", "missing", "changed", "stale", "failed", "up-to-date"]
SLIDE_JOB = "slides_job"
COLLECTION_JOB = "collection_job"
SLIDE_AND_COLLECTION_JOB = "slide_and_collection_job"
COLLECTION = "(collection)"
PARTITION_TAG = "dagster/partition"
SLIDE_STEPS_TAG = "bms/slide_steps"
"""On a run of `SLIDE_AND_COLLECTION_JOB`, "ok" once its slide's steps and checks have all
passed: a failure of that run in a collection step then does not make the slide "failed".
Set after the run, so a run that died on the way has none and counts as failed."""


@dataclass
class SlidePlan:
    slide_id: str
    state: SlideState
    detail: str = ""
    status: SlideStatus | None = None

    @property
    def needs_run(self) -> bool:
        return self.state not in ("up-to-date", "not-ready")


@dataclass
class SlideOutcome:
    slide_id: str
    success: bool
    skipped: bool = False
    error: str = ""
    checks: dict[str, bool] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)
    check_details: dict[str, str] = field(default_factory=dict)
    """Failed check -> its description and the values behind it."""
    warnings: list[str] = field(default_factory=list)
    """Data warnings of the materializations (lab cells read as text...)."""
    run_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.success and all(self.checks.values())


def slide_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    return sorted(
        (
            key
            for key in graph.get_all_asset_keys()
            if graph.get(key).partitions_def == slides_partitions
        ),
        key=lambda k: k.to_user_string(),
    )


def _last_run_failed(instance: dg.DagsterInstance, slide_id: str) -> bool:
    """The slide's newest run (of whichever job: only slide runs carry its partition) failed
    in the slide's own steps or checks."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={PARTITION_TAG: slide_id}), limit=1
    )
    if not records:
        return False
    run = records[0].dagster_run
    return run.status == dg.DagsterRunStatus.FAILURE and run.tags.get(SLIDE_STEPS_TAG) != "ok"


def plan_slides(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    layout: DataLayout,
    slide_ids: set[str] | None = None,
) -> list[SlidePlan]:
    """The state of every slide under raw/slides (or of `slide_ids`), scanned through the
    definitions' `bms` resource (so a URL data root works) or else at `layout`."""
    bms = (defs.resources or {}).get("bms")
    if isinstance(bms, BmsPipelineResource):
        statuses = bms.scan()
    else:
        from bms_pipeline.core.dicom.overrides import override_paths  # imports wsidicom

        statuses = scan_slides(
            layout.slides_dir, extra_inputs=lambda slide_id: override_paths(layout.root, slide_id)
        )
    if slide_ids is not None:
        statuses = [s for s in statuses if s.slide_id in slide_ids]
    known = set(instance.get_dynamic_partitions(SLIDES_PARTITIONS))
    resolver = Staleness(instance, defs)
    keys = slide_asset_keys(defs)
    plans = []
    for status in statuses:
        sid = status.slide_id
        if not status.ready:
            plans.append(SlidePlan(sid, "not-ready", status.reason, status))
            continue
        if sid not in known:
            plans.append(SlidePlan(sid, "missing", "not registered yet", status))
            continue
        recorded = recorded_signature(instance, sid)
        if recorded is None:
            plans.append(SlidePlan(sid, "missing", "never inventoried", status))
            continue
        if recorded != status.signature:
            plans.append(SlidePlan(sid, "changed", "slide files changed on disk", status))
            continue
        states = {key: resolver.status(key, sid) for key in keys}
        missing = [k.to_user_string() for k, s in states.items() if s == "missing"]
        stale = [k.to_user_string() for k, s in states.items() if s == "stale"]
        if missing:
            plans.append(
                SlidePlan(sid, "missing", f"not materialized: {', '.join(missing)}", status)
            )
        elif _last_run_failed(instance, sid):
            plans.append(SlidePlan(sid, "failed", "the last run failed", status))
        elif stale:
            causes = sorted({c for k in keys for c in resolver.causes(k, sid)})
            plans.append(
                SlidePlan(sid, "stale", f"stale ({'/'.join(causes)}): {', '.join(stale)}", status)
            )
        else:
            plans.append(SlidePlan(sid, "up-to-date", "", status))
    return plans


def register_slides(instance: dg.DagsterInstance, slide_ids: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(SLIDES_PARTITIONS))
    new = [s for s in slide_ids if s not in known]
    if new:
        instance.add_dynamic_partitions(SLIDES_PARTITIONS, new)


def _execute(
    job: dg.JobDefinition, instance: dg.DagsterInstance, **kwargs
) -> dg.ExecuteInProcessResult:
    """`execute_in_process` as every run here needs it: tagged with this process (so a crash
    is detected by `reap_dead_runs`) and with Dagster's console log at a level people read
    (WARNING by default: events stay in the instance for the UI)."""
    from bms_pipeline.orchestration.instance import (
        DAGSTER_LOG_LEVEL_ENV,
        WORKER_TAG,
        worker_identity,
    )

    level = os.environ.get(DAGSTER_LOG_LEVEL_ENV, "CRITICAL")
    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={WORKER_TAG: worker_identity()},
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        **kwargs,
    )


def _outcome(
    slide_id: str,
    result: dg.ExecuteInProcessResult,
    outcome: SlideOutcome | None = None,
    steps: Callable[[str | None], bool] | None = None,
) -> SlideOutcome:
    """What `result` says of `slide_id` (or of the collection): its checks, the first line of
    each failure, data warnings; with `steps`, of the steps it accepts only (a run of
    `SLIDE_AND_COLLECTION_JOB` holds both parts), and successful unless one of those failed."""
    outcome = outcome or SlideOutcome(slide_id, True)
    mine = steps or (lambda _step: True)
    failures = [e for e in result.get_step_failure_events() if mine(e.step_key)]
    # A run that failed only in the other part's steps: this part succeeded.
    elsewhere = steps is not None and bool(result.get_step_failure_events())
    succeeded = result.success or (elsewhere and not failures)
    outcome.success = outcome.success and succeeded
    outcome.run_ids.append(result.run_id)
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION or not mine(
            event.step_key
        ):
            continue
        evaluation = event.asset_check_evaluation_data
        outcome.checks[evaluation.check_name] = evaluation.passed
        if not evaluation.passed:
            outcome.check_details[evaluation.check_name] = _check_detail(evaluation)
    for event in failures:
        cause = _root_cause(event.step_failure_data.error)
        if outcome.check_details and "blocking asset check" in cause:
            continue  # the failed check is named with its values already
        outcome.error = f"{event.step_key}: {cause}"
    for mat in result.get_asset_materialization_events():
        if not mine(mat.step_key):
            continue
        materialization = mat.step_materialization_data.materialization
        examples = materialization.metadata.get("warning_examples")
        shown = examples.value if examples is not None else None
        if isinstance(shown, list) and shown:
            name = materialization.asset_key.to_user_string()
            count = materialization.metadata.get("warnings")
            total = count.value if count is not None else len(shown)
            outcome.warnings += [f"{name}: {w}" for w in shown]
            if isinstance(total, int) and total > len(shown):
                outcome.warnings.append(f"{name}: ... and {total - len(shown)} more")
    if mine("sm_series"):
        for mat in result.asset_materializations_for_node("sm_series"):
            outcome.metadata = {k: v.value for k, v in mat.metadata.items()}
    return outcome


def _check_detail(evaluation) -> str:
    """A failed check's description and the values behind it (the patient ids, rows...)."""
    parts = [evaluation.description] if evaluation.description else []
    for name, value in sorted(evaluation.metadata.items()):
        shown = value.value
        if isinstance(shown, list | tuple):
            if not shown:
                continue
            shown = ", ".join(map(str, shown))
        elif isinstance(shown, dict):
            shown = json.dumps(shown, sort_keys=True)
        parts.append(f"{name}: {shown}")
    return "; ".join(parts)


def _root_cause(error) -> str:
    """The innermost error of a step failure, which names the file, line and reason; every
    line of it (an input error lists each bad row), without the exception's class name."""
    if error is None:
        return "step failed"
    while error.cause is not None:
        error = error.cause
    if error.cls_name == "DagsterExecutionInterruptedError":
        return "interrupted by a stop signal (run canceled)"
    text = (error.message or "").strip()
    if error.cls_name:
        text = re.sub(rf"^[\w.]*{re.escape(error.cls_name)}: ", "", text)
    return text or error.cls_name or "step failed"


def _slide_selection(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    plan: SlidePlan,
    force: bool,
    outcome: SlideOutcome,
) -> list[dg.AssetKey] | None:
    """The slide's assets to materialize: all of them with `force`, else whatever is not
    FRESH and everything below it, after re-inventorying a missing or changed slide (whose
    failure is recorded in `outcome`). None: nothing to run."""
    keys = slide_asset_keys(defs)
    if force:
        return keys
    if plan.state in ("missing", "changed"):
        job = defs.resolve_job_def(SLIDE_JOB)
        result = _execute(
            job, instance, partition_key=plan.slide_id, asset_selection=[INVENTORY_KEY]
        )
        _outcome(plan.slide_id, result, outcome)
        if not result.success:
            return None
    resolver = Staleness(instance, defs)
    candidates = [key for key in keys if key != INVENTORY_KEY]
    not_fresh = [
        key
        for key in candidates
        if plan.state == "failed" or resolver.status(key, plan.slide_id) != "fresh"
    ]
    # Dagster reports only the first stale asset of a chain; everything below it reruns too.
    below = (
        dg.AssetSelection.assets(*not_fresh).downstream().resolve(defs.resolve_asset_graph())
        if not_fresh
        else set()
    )
    downstream = [key for key in candidates if key in below]
    if not downstream:
        outcome.skipped = plan.state != "missing"
        return None
    return downstream


def run_slide(
    instance: dg.DagsterInstance, defs: dg.Definitions, plan: SlidePlan, force: bool = False
) -> SlideOutcome:
    """Re-inventory a missing or changed slide, then materialize whatever is not FRESH
    (everything, with `force`)."""
    outcome = SlideOutcome(plan.slide_id, True)
    selection = _slide_selection(instance, defs, plan, force, outcome)
    if selection is None:
        return outcome
    job = defs.resolve_job_def(SLIDE_JOB)
    if force:
        result = _execute(job, instance, partition_key=plan.slide_id)
    else:
        result = _execute(job, instance, partition_key=plan.slide_id, asset_selection=selection)
    return _outcome(plan.slide_id, result, outcome)


def run_slide_and_collection(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    plan: SlidePlan,
    force: bool = False,
    refresh: bool = False,
) -> tuple[SlideOutcome, SlideOutcome | None]:
    """`run_slide`, with the collection tables and reports that its run makes stale (all of
    them with `force` or `refresh`, and any already stale) materialized in the same run,
    each after the slide assets it reads: the run that `run_collection` would start next
    is not needed (its creation, planning and end cost about 0.2 s). The collection's
    outcome is None when the slide's own steps did not all pass (their failure blocks the
    collection steps below them): the caller then runs the collection alone, refreshing
    what a withdrawn slide may have left listed. A run that dies, even in a collection
    step, carries no `SLIDE_STEPS_TAG`, so the next `run` converts the slide again."""
    outcome = SlideOutcome(plan.slide_id, True)
    selection = _slide_selection(instance, defs, plan, force, outcome)
    if selection is None:
        return outcome, None
    graph = defs.resolve_asset_graph()
    below = dg.AssetSelection.assets(*selection).downstream().resolve(graph)
    resolver = Staleness(instance, defs)
    collection = [
        key
        for key in collection_asset_keys(defs)
        if force or refresh or key in below or resolver.status(key) != "fresh"
    ]
    job = defs.resolve_job_def(SLIDE_AND_COLLECTION_JOB)
    result = _execute(
        job, instance, partition_key=plan.slide_id, asset_selection=[*selection, *collection]
    )
    collection_steps = set(defs.resolve_job_def(COLLECTION_JOB).graph.node_names())
    _outcome(plan.slide_id, result, outcome, steps=lambda step: step not in collection_steps)
    if not outcome.ok:
        return outcome, None
    instance.add_run_tags(result.run_id, {SLIDE_STEPS_TAG: "ok"})
    return outcome, _outcome(COLLECTION, result, steps=lambda step: step in collection_steps)


def collection_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def(COLLECTION_JOB)
    return sorted(
        (key for key in graph.get_all_asset_keys() if key in job.asset_layer.selected_asset_keys),
        key=lambda k: k.to_user_string(),
    )


def run_collection(
    instance: dg.DagsterInstance, defs: dg.Definitions, force: bool = False
) -> SlideOutcome:
    """Materialize the unpartitioned tables and reports that are missing or stale."""
    resolver = Staleness(instance, defs)
    keys = [key for key in collection_asset_keys(defs) if force or resolver.status(key) != "fresh"]
    if not keys:
        return SlideOutcome(COLLECTION, True, skipped=True)
    result = _execute(defs.resolve_job_def(COLLECTION_JOB), instance, asset_selection=keys)
    return _outcome(COLLECTION, result)


@dataclass(frozen=True)
class InputProblem:
    """A collection-level input problem found before any conversion."""

    message: str  # file[:line]: reason
    fatal: bool  # every slide needs this input: nothing is converted


def check_collection_inputs(layout: DataLayout) -> list[InputProblem]:
    """collection.yaml, clinical.csv and the lab workbook, each read once up front, so a
    problem is reported once with its file, line and reason instead of inside every slide's
    conversion. The first two are needed by every conversion; the workbook only by the
    collection tables."""
    from bms_pipeline.core.clinical.lab import read_lab_values
    from bms_pipeline.core.clinical.patients import read_clinical_csv
    from bms_pipeline.core.collection import CollectionConfig

    problems: list[InputProblem] = []
    for read, fatal in (
        (lambda: CollectionConfig.load(layout.collection_yaml), True),
        (lambda: read_clinical_csv(layout.clinical_csv), True),
        (lambda: read_lab_values(layout.lab_values_xlsx), False),
    ):
        try:
            read()
        except (ValueError, OSError) as exc:
            problems.append(InputProblem(str(exc), fatal))
    return problems


def collection_states(instance: dg.DagsterInstance, defs: dg.Definitions) -> list[tuple[str, str]]:
    """(asset, state) of every collection-wide table and report, for `status`."""
    resolver = Staleness(instance, defs)
    names = {"missing": "missing", "stale": "stale", "fresh": "up-to-date"}
    return [
        (key.to_user_string(), names[resolver.status(key)]) for key in collection_asset_keys(defs)
    ]
