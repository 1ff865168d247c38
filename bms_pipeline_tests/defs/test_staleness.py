"""The staleness adapter against the real Dagster: fails loudly when Dagster's private
stale-status API moves or changes its verdicts (`bms_pipeline/orchestration/staleness.py`)."""

from __future__ import annotations

import dagster as dg

from bms_pipeline.orchestration.staleness import Staleness

PARTS = dg.StaticPartitionsDefinition(["a", "b"])


def _defs(code_version: str) -> dg.Definitions:
    """Two partitioned assets, the upstream one's code version given, and one unpartitioned."""

    @dg.asset(partitions_def=PARTS, code_version=code_version)
    def up() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(partitions_def=PARTS, deps=[up], code_version="1")
    def down() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    @dg.asset(code_version="1")
    def whole() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return dg.Definitions(assets=[up, down, whole])


def test_missing_fresh_and_stale_by_code_and_data() -> None:
    up, down, whole = dg.AssetKey("up"), dg.AssetKey("down"), dg.AssetKey("whole")
    with dg.instance_for_test() as instance:
        defs = _defs("1")
        assert Staleness(instance, defs).status(up, "a") == "missing"
        assert Staleness(instance, defs).status(whole) == "missing"

        for part in ("a", "b"):
            dg.materialize(
                [defs.get_assets_def(up), defs.get_assets_def(down)],
                instance=instance,
                partition_key=part,
            )
        dg.materialize([defs.get_assets_def(whole)], instance=instance)
        fresh = Staleness(instance, defs)
        assert {fresh.status(k, p) for k in (up, down) for p in ("a", "b")} == {"fresh"}
        assert fresh.status(whole) == "fresh"
        assert fresh.causes(down, "a") == []

        # A code change upstream: the upstream is stale by code. Dagster 1.13 reports only
        # the first stale asset of a chain (`run_slide` adds everything downstream itself).
        changed = _defs("2")
        after_code = Staleness(instance, changed)
        assert after_code.status(up, "a") == "stale"
        assert after_code.causes(up, "a") == ["code"]
        assert after_code.status(down, "a") == "fresh"
        assert after_code.status(whole) == "fresh"

        # The upstream of "a" rematerialized with the new code: "down" of "a" now has newer
        # upstream data, "b" is untouched by it.
        dg.materialize([changed.get_assets_def(up)], instance=instance, partition_key="a")
        after_data = Staleness(instance, changed)
        assert after_data.status(up, "a") == "fresh"
        assert after_data.status(down, "a") == "stale"
        assert after_data.causes(down, "a") == ["data"]
        assert after_data.status(up, "b") == "stale"
