"""Running what `core.run_decision` decides, shared by the CLI and tests.

`plan_slides` gathers each slide's facts (`defs.facts`) and asks the one decision; `run_slide`
materializes exactly the assets it names (everything with `force`); `run_collection` does the
same for the collection-wide tables and reports; `withdraw_removed` takes out of every output
the slides that are no longer inputs.
"""

import json
import re
from dataclasses import dataclass, field

import dagster as dg

from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.discovery import FoundSlide
from bms_pipeline.core.run_decision import INVENTORY_ASSET, Decision, SlideVerdict
from bms_pipeline.defs.facts import pending_withdrawals as _pending
from bms_pipeline.defs.facts import plan_collection
from bms_pipeline.defs.facts import plan_slides as _plan
from bms_pipeline.defs.partitions import SLIDES_PARTITIONS, slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource

SLIDE_JOB = "slides_job"
COLLECTION_JOB = "collection_job"
COLLECTION = "(collection)"
PARTITION_TAG = "dagster/partition"


@dataclass
class PlannedSlide:
    slide_id: str
    state: SlideVerdict
    detail: str = ""
    status: FoundSlide | None = None
    decision: Decision | None = None

    @property
    def needs_run(self) -> bool:
        return self.decision is not None and self.decision.needs_run


@dataclass
class SlideRunResult:
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
    withdrawn: str = ""
    """Why the slide was withdrawn from every output (it is no longer an input)."""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.success and all(self.checks.values())


def slide_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """The slide's assets in graph order (the inventory first)."""
    graph = defs.resolve_asset_graph()
    keys = {
        k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def == slides_partitions
    }
    return [k for k in graph.toposorted_asset_keys if k in keys]


def code_versions(defs: dg.Definitions, keys: list[dg.AssetKey]) -> dict[str, str]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): str(graph.get(k).code_version or "") for k in keys}


def _bms(defs: dg.Definitions, layout: DataLayout | None = None) -> BmsPipelineResource:
    bms = (defs.resources or {}).get("bms")
    if isinstance(bms, BmsPipelineResource):
        return bms
    if layout is None:
        raise ValueError("definitions without a `bms` resource")
    return BmsPipelineResource(data_root=str(layout.root))


def plan_slides(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    layout: DataLayout,
    slide_ids: set[str] | None = None,
) -> list[PlannedSlide]:
    """The decision for every slide under raw/slides (or for `slide_ids`)."""
    versions = code_versions(defs, slide_asset_keys(defs))
    return [
        PlannedSlide(status.slide_id, decision.state, decision.reason, status, decision)
        for status, decision in _plan(instance, _bms(defs, layout), versions, slide_ids)
    ]


def pending_withdrawals(defs: dg.Definitions, plans: list[PlannedSlide]) -> dict[str, str]:
    """The published slides that are no longer inputs (what `withdraw_removed` takes out)."""
    return _pending(_bms(defs), {p.slide_id for p in plans})


def withdraw_removed(defs: dg.Definitions, plans: list[PlannedSlide]) -> dict[str, str]:
    """Withdraw from every output the published slides that are no longer inputs (removed
    or renamed under raw/slides, or skipped in collection.yaml): slide id -> why. The index
    and clinical tables follow on the collection's next build (their versions hold the
    published files and patients)."""
    bms = _bms(defs)
    withdrawn = pending_withdrawals(defs, plans)
    for sid in withdrawn:
        bms.withdraw_slide(sid)
    return withdrawn


def register_slides(instance: dg.DagsterInstance, slide_ids: list[str]) -> None:
    known = set(instance.get_dynamic_partitions(SLIDES_PARTITIONS))
    new = [s for s in slide_ids if s not in known]
    if new:
        instance.add_dynamic_partitions(SLIDES_PARTITIONS, new)


DEFAULT_LOG_LEVEL = "CRITICAL"
"""Dagster's console log in the runs executed here unless the caller asks for more (the
command line's -v: DEBUG); the events stay in the instance for the UI either way."""


def _execute(
    job: dg.JobDefinition, instance: dg.DagsterInstance, log_level: str, **kwargs
) -> dg.ExecuteInProcessResult:
    """`execute_in_process` as every run here needs it: tagged with this process (so a crash
    is detected by `reap_dead_runs`) and with Dagster's console log at `log_level`."""
    from bms_pipeline.core.worker_identity import WORKER_TAG, worker_identity

    return job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={WORKER_TAG: worker_identity()},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        **kwargs,
    )


def _outcome(
    slide_id: str,
    result: dg.ExecuteInProcessResult,
    outcome: SlideRunResult | None = None,
) -> SlideRunResult:
    """What `result` says of `slide_id` (or of the collection): its checks, the first line of
    each failure, data warnings."""
    outcome = outcome or SlideRunResult(slide_id, True)
    failures = result.get_step_failure_events()
    outcome.success = outcome.success and result.success
    outcome.run_ids.append(result.run_id)
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION:
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
    plan: PlannedSlide,
    force: bool,
    outcome: SlideRunResult,
    log_level: str,
) -> list[dg.AssetKey] | None:
    """The slide's assets to materialize: all of them with `force`; for a slide whose files
    changed, the inventory first, then what the decision names on its new facts (whose
    failure is recorded in `outcome`). None: nothing to run."""
    keys = slide_asset_keys(defs)
    if force:
        return keys
    decision = plan.decision
    if decision is None:
        return None
    if decision.state == "changed":
        job = defs.resolve_job_def(SLIDE_JOB)
        result = _execute(
            job,
            instance,
            log_level,
            partition_key=plan.slide_id,
            asset_selection=[dg.AssetKey(INVENTORY_ASSET)],
        )
        _outcome(plan.slide_id, result, outcome)
        if not result.success:
            return None
        layout = _bms(defs).layout
        decision = plan_slides(instance, defs, layout, {plan.slide_id})[0].decision
        if decision is None or not decision.needs_run:
            outcome.skipped = True
            return None
    if not decision.needs_run:
        outcome.skipped = True
        return None
    wanted = set(decision.assets)
    return [k for k in keys if k.to_user_string() in wanted]


def run_slide(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    plan: PlannedSlide,
    force: bool = False,
    log_level: str = DEFAULT_LOG_LEVEL,
) -> SlideRunResult:
    """Materialize what the slide's decision names (everything with `force`)."""
    outcome = SlideRunResult(plan.slide_id, True)
    selection = _slide_selection(instance, defs, plan, force, outcome, log_level)
    if selection is None:
        return outcome
    job = defs.resolve_job_def(SLIDE_JOB)
    if force:
        result = _execute(job, instance, log_level, partition_key=plan.slide_id)
    else:
        result = _execute(
            job, instance, log_level, partition_key=plan.slide_id, asset_selection=selection
        )
    return _outcome(plan.slide_id, result, outcome)


def collection_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def(COLLECTION_JOB)
    return sorted(
        (key for key in graph.get_all_asset_keys() if key in job.asset_layer.selected_asset_keys),
        key=lambda k: k.to_user_string(),
    )


def collection_plan(instance: dg.DagsterInstance, defs: dg.Definitions) -> Decision:
    """The decision for the collection-wide tables and reports."""
    versions = code_versions(defs, collection_asset_keys(defs))
    return plan_collection(instance, _bms(defs), versions)[0]


def run_collection(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    force: bool = False,
    log_level: str = DEFAULT_LOG_LEVEL,
) -> SlideRunResult:
    """Materialize the collection tables and reports whose inputs changed (all with `force`)."""
    keys = collection_asset_keys(defs)
    if not force:
        wanted = set(collection_plan(instance, defs).assets)
        keys = [k for k in keys if k.to_user_string() in wanted]
    if not keys:
        return SlideRunResult(COLLECTION, True, skipped=True)
    result = _execute(
        defs.resolve_job_def(COLLECTION_JOB), instance, log_level, asset_selection=keys
    )
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
    from bms_pipeline.core.clinical.lab_cells import read_lab_values
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
    """(asset, state and why) of every collection-wide table and report, for `status`."""
    decision = collection_plan(instance, defs)
    states = []
    for key in collection_asset_keys(defs):
        name = key.to_user_string()
        if name in decision.assets:
            states.append((name, f"stale: {decision.why.get(name, '')}"))
        elif decision.state == "failed":
            states.append((name, f"failed: {decision.reason}"))
        else:
            states.append((name, "up-to-date"))
    return states
