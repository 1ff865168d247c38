"""The facts `core.run_decision` decides on, read from the files and the Dagster instance.

Every asset records the version of its inputs twice: as a run tag when it starts (so a failed
attempt is known with the inputs it failed on) and, on success, as its data version with the
parts in the `bms/inputs` metadata (so `status` can say which input changed). Only public
Dagster API: run tags, run records, materialization records.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from bms_pipeline.core.run_decision import INVENTORY_ASSET, Attempt, SlideFacts
from bms_pipeline.core.slide_id import patient_id_of
from bms_pipeline.core.versions import (
    CollectionInputs,
    InputVersion,
    collection_versions,
    slide_versions,
)

VERSION_TAG = "bms/version/"
"""Run tag prefix: `bms/version/<asset>` = the version digest the asset started on."""
REFUSED_TAG = "bms/refused"
"""Run tag: the publication gate refused this asset's output."""
PROCESS_DIED_TAG = "bms/process_died"
"""Run tag: the run was marked failed because its process was gone (not a verdict)."""
INPUTS_METADATA = "bms/inputs"
"""Materialization metadata: the parts of the version (JSON of part -> hash)."""
SLIDE_VERSION_METADATA = "slide_version"
"""`mrxs_slide` metadata: the slide files' version (content hash with override files)."""
PARTITION_TAG = "dagster/partition"
COLLECTION_JOB = "collection_job"


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dict[str, Any] | None:
    """The metadata values of the asset's (partition's) newest materialization, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def published_parts(
    instance: dg.DagsterInstance, asset: str, partition: str | None = None
) -> dict[str, str] | None:
    """The version parts the asset was last materialized with (None: never, or before
    versions were recorded, which counts as never)."""
    metadata = latest_metadata(instance, dg.AssetKey(asset), partition)
    if metadata is None:
        return None
    parts = metadata.get(INPUTS_METADATA)
    if isinstance(parts, str):
        parts = json.loads(parts)
    return {str(k): str(v) for k, v in parts.items()} if isinstance(parts, dict) else None


def slide_data_version(instance: dg.DagsterInstance, slide_id: str) -> str | None:
    metadata = latest_metadata(instance, dg.AssetKey(INVENTORY_ASSET), slide_id)
    if metadata is None:
        return None
    value = metadata.get(SLIDE_VERSION_METADATA) or metadata.get("content_hash")
    return str(value) if value is not None else None


def recorded_signature(instance: dg.DagsterInstance, slide_id: str) -> str | None:
    metadata = latest_metadata(instance, dg.AssetKey(INVENTORY_ASSET), slide_id)
    if metadata is None or metadata.get("file_signature") is None:
        return None
    return str(metadata["file_signature"])


def last_failure(instance: dg.DagsterInstance, filters: dg.RunsFilter) -> Attempt | None:
    """The newest run matching `filters`, as an `Attempt` when it did not succeed."""
    records = instance.get_run_records(filters=filters, limit=1)
    if not records:
        return None
    run = records[0].dagster_run
    if run.status in (dg.DagsterRunStatus.SUCCESS,) or not run.is_finished:
        return None
    versions = {
        k.removeprefix(VERSION_TAG): v for k, v in run.tags.items() if k.startswith(VERSION_TAG)
    }
    retriable = run.status == dg.DagsterRunStatus.CANCELED or PROCESS_DIED_TAG in run.tags
    return Attempt(
        versions=versions,
        reason=failure_reason(instance, run.run_id),
        refused=REFUSED_TAG in run.tags,
        retriable=retriable,
    )


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first failed check or step of a run, in one line (no values: the summary of `run`
    gives them in full)."""
    failed_checks = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        event = entry.dagster_event
        data = event.asset_check_evaluation_data if event is not None else None
        if data is not None and not data.passed:
            failed_checks.append(data.check_name)
    if failed_checks:
        return f"check {', '.join(sorted(set(failed_checks)))} failed"
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.dagster_event
        if event is None or event.step_failure_data is None:
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        text = (error.message if error is not None else "") or "step failed"
        if error is not None and error.cls_name:
            text = re.sub(rf"^[\w.]*{re.escape(error.cls_name)}: ", "", text)
        return f"{event.step_key}: {text.strip().splitlines()[0] if text.strip() else 'failed'}"
    return "the run failed"


def gather_slide_facts(
    instance: dg.DagsterInstance,
    statuses: Iterable[Any],
    inputs: CollectionInputs,
    settings: Any,
    versions_of: Mapping[str, str],
) -> list[SlideFacts]:
    """The facts of every scanned slide (`FoundSlide`): `versions_of` maps each slide asset
    below the inventory to its code version."""
    known = set(instance.get_dynamic_partitions("slides"))
    skipped = inputs.collection.skipped_slides
    facts = []
    for status in statuses:
        sid = status.slide_id
        base = {
            "slide_id": sid,
            "ready": status.ready,
            "not_ready_reason": status.reason,
            "skip_reason": skipped.get(sid),
        }
        if sid not in known or not status.ready or sid in skipped:
            facts.append(SlideFacts(**base))
            continue
        signature = recorded_signature(instance, sid)
        data_version = slide_data_version(instance, sid)
        failure = last_failure(instance, dg.RunsFilter(tags={PARTITION_TAG: sid}))
        if signature is None or data_version is None:
            facts.append(SlideFacts(**base, last_failure=failure, signature=status.signature))
            continue
        current = slide_versions(
            inputs, sid, patient_id_of(sid), data_version, settings, versions_of
        )
        facts.append(
            SlideFacts(
                **base,
                inventoried=True,
                files_changed=signature != status.signature,
                current=current,
                published={a: published_parts(instance, a, sid) for a in current},
                last_failure=failure,
                signature=status.signature,
            )
        )
    return facts


def collection_facts(
    instance: dg.DagsterInstance, versions_of: Mapping[str, str], **sources: Any
) -> tuple[dict[str, InputVersion], dict[str, dict[str, str] | None], Attempt | None]:
    """(versions now, versions published, the last failed collection run) of the collection
    assets in `versions_of`; `sources` as `core.versions.collection_versions` takes them."""
    current = collection_versions(versions_of, **sources)
    published = {a: published_parts(instance, a) for a in current}
    failure = last_failure(instance, dg.RunsFilter(job_name=COLLECTION_JOB))
    return current, published, failure


# -- the asset side ------------------------------------------------------------------------


def start_attempt(context: dg.AssetExecutionContext, version: InputVersion) -> None:
    """Record on the run the version this asset starts on, so a failure is remembered with
    the inputs it failed on (`last_failure`)."""
    name = context.asset_key.to_user_string()
    context.instance.add_run_tags(context.run.run_id, {f"{VERSION_TAG}{name}": version.digest})


def start_inventory(context: dg.AssetExecutionContext, signature: str) -> None:
    """Record on the run the files an inventory starts on (their change detector): a slide
    whose inventory fails rests until they change."""
    context.instance.add_run_tags(
        context.run.run_id, {f"{VERSION_TAG}{INVENTORY_ASSET}": signature}
    )


def mark_refused(context: dg.AssetExecutionContext) -> None:
    """The publication gate refused this asset's output: the slide rests as `refused`."""
    context.instance.add_run_tags(
        context.run.run_id, {REFUSED_TAG: context.asset_key.to_user_string()}
    )


def version_metadata(version: InputVersion) -> dict[str, Any]:
    """What a materialization records of its version (hashes only)."""
    return {INPUTS_METADATA: dg.MetadataValue.json(dict(sorted(version.parts.items())))}


def own_code_version(context: dg.AssetExecutionContext) -> str:
    return str(context.assets_def.code_versions_by_key.get(context.asset_key) or "")


# -- plans: the facts, then the one decision --------------------------------------------------


def plan_slides(
    instance: dg.DagsterInstance,
    bms: Any,
    versions_of: Mapping[str, str],
    slide_ids: set[str] | None = None,
    statuses: list[Any] | None = None,
) -> list[tuple[Any, Any]]:
    """(FoundSlide, Decision) of every slide under raw/slides (or of `slide_ids`), through
    `bms` (a `BmsPipelineResource`); `versions_of`: slide asset -> code version. `statuses`:
    a scan already made (the sensor's, which waits for files to settle)."""
    from bms_pipeline.core.run_decision import INVENTORY_ASSET, decide_slide

    scanned: list[Any] = bms.scan() if statuses is None else statuses
    if slide_ids is not None:
        scanned = [s for s in scanned if s.slide_id in slide_ids]
    below = {a: v for a, v in versions_of.items() if a != INVENTORY_ASSET}
    order = [INVENTORY_ASSET, *below]
    try:
        inputs = bms.collection_inputs()
    except (ValueError, OSError) as exc:
        # No version can be known without collection.yaml: new slides are still registered
        # and requested (their conversion names the problem); the others wait for it.
        known = set(instance.get_dynamic_partitions("slides"))
        problem = str(exc)
        return [
            (s, decide_slide(_without_collection(s, problem, s.slide_id in known), order))
            for s in scanned
        ]
    facts = gather_slide_facts(
        instance, scanned, inputs, bms.conversion_settings(inputs.collection), below
    )
    return [(s, decide_slide(f, order)) for s, f in zip(scanned, facts, strict=True)]


def _without_collection(status: Any, problem: str, known: bool) -> SlideFacts:
    if not status.ready or known:
        return SlideFacts(status.slide_id, False, status.reason or problem)
    return SlideFacts(status.slide_id, True)


def pending_withdrawals(bms: Any, present: set[str]) -> dict[str, str]:
    """The published slides that are no longer inputs, with why (`slides_to_withdraw`), and
    validation results left without a slide: what `run` and the sensor both withdraw."""
    from bms_pipeline.core.run_decision import slides_to_withdraw

    pending = slides_to_withdraw(bms.published_slides(), present, bms.collection().skipped_slides)
    names = bms.listing(bms.layout.validation_dir)
    validated = {n.split("/")[-1].removesuffix(".parquet") for n in names if n.endswith(".parquet")}
    for sid in sorted(validated - present):
        pending.setdefault(sid, "no longer under raw/slides (removed or renamed)")
    return pending


def plan_collection(instance: dg.DagsterInstance, bms: Any, versions_of: Mapping[str, str]):
    """The collection's Decision, and the versions it compared."""
    from bms_pipeline.core.run_decision import decide_collection

    current, published, failure = collection_facts(
        instance, versions_of, **bms.collection_sources()
    )
    return decide_collection(current, published, failure), current


def slide_asset_version(context: dg.AssetExecutionContext, bms: Any) -> InputVersion:
    """The version of the slide asset being materialized, from the inputs now and the
    outputs it is really built from (their published versions), recorded on the run."""
    sid = context.partition_key
    name = context.asset_key.to_user_string()
    instance = context.instance
    inputs = bms.collection_inputs()
    published = {
        a: published_parts(instance, a, sid)
        for a in ("sm_series", "ann_series", "dicom_validation")
    }
    versions = slide_versions(
        inputs,
        sid,
        patient_id_of(sid),
        slide_data_version(instance, sid) or "never inventoried",
        bms.conversion_settings(inputs.collection),
        {name: own_code_version(context)},
        published=published,
    )
    version = versions[name]
    start_attempt(context, version)
    return version


def collection_asset_version(context: dg.AssetExecutionContext, bms: Any) -> InputVersion:
    """The version of the collection asset being materialized, recorded on the run."""
    name = context.asset_key.to_user_string()
    version = collection_versions({name: own_code_version(context)}, **bms.collection_sources())[
        name
    ]
    start_attempt(context, version)
    return version
