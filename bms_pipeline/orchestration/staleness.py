"""Dagster's stale status (missing / stale / fresh, and why) behind one small adapter.

Dagster 1.13 has no public API for an asset partition's staleness: the UI computes it with
`CachingStaleStatusResolver` in `dagster._core`, which may change in any release. Every use in
this project goes through this module, so a Dagster upgrade that moves or changes it breaks
here, in one place, and `bms_pipeline_tests/defs/test_staleness.py` fails loudly (it checks the
import and each verdict on a real instance) instead of `run` silently converting too much or
too little.
"""

from __future__ import annotations

from typing import Literal

import dagster as dg

try:  # the private API, the only import of dagster._core for staleness
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest
except ImportError as exc:  # pragma: no cover - only on a Dagster that moved them
    raise ImportError(
        "bms_pipeline.orchestration.staleness: Dagster's stale-status API moved "
        f"(dagster {dg.__version__}); update this adapter"
    ) from exc

Freshness = Literal["missing", "stale", "fresh"]

_NAMES: dict[object, Freshness] = {
    StaleStatus.MISSING: "missing",
    StaleStatus.STALE: "stale",
    StaleStatus.FRESH: "fresh",
}


class Staleness:
    """Stale status of assets (and partitions) of `defs` in `instance`, cached per object:
    make a new one after materializing, as Dagster's resolver caches what it read."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
        self._resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
        )

    def status(self, key: dg.AssetKey, partition: str | None = None) -> Freshness:
        """missing (never materialized), stale (code version or upstream data changed since)
        or fresh. Raises on a status this adapter does not know (a changed Dagster)."""
        raw = self._resolver.get_status(key, partition)
        try:
            return _NAMES[raw]
        except KeyError:
            raise ValueError(f"unknown Dagster stale status {raw!r} for {key}") from None

    def causes(self, key: dg.AssetKey, partition: str | None = None) -> list[str]:
        """Why `key` is stale, as Dagster's cause categories in lower case ("code", "data")."""
        return sorted(
            {c.category.value.lower() for c in self._resolver.get_stale_causes(key, partition)}
        )
