"""Nightly backfills: every asset that is missing, or stale by code or data, is requested once
per night by the automation sensor, which emits backfills (so many slides are one backfill)."""

import dagster as dg

NIGHTLY_CRON = "0 2 * * *"
TIMEZONE = "UTC"

# Dagster's stubs type the built-in conditions without their public since_last_handled().
needs_work = (
    dg.AutomationCondition.missing()
    | dg.AutomationCondition.code_version_changed().since_last_handled()  # pyright: ignore[reportAttributeAccessIssue]
    | dg.AutomationCondition.any_deps_updated().since_last_handled()  # pyright: ignore[reportAttributeAccessIssue]
)

nightly = (
    dg.AutomationCondition.cron_tick_passed(NIGHTLY_CRON, TIMEZONE).since_last_handled()
    & needs_work
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
).with_label(f"nightly ({NIGHTLY_CRON} {TIMEZONE}): missing or stale")

automation_sensor = dg.AutomationConditionSensorDefinition(
    name="nightly_backfills",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    emit_backfills=True,
    minimum_interval_seconds=60,
    description="Evaluates the nightly condition of every asset; on by default under `dagster dev`.",
)


IDEMPOTENT_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
"""For assets whose writes are atomic and idempotent and whose failures can be transient
(the DuckDB lock timing out, a validator subprocess timing out). Conversions get none:
a corrupt slide fails the same way every time, and should fail fast with its reason."""
