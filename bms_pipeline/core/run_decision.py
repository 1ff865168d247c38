"""What needs a run, and why: one pure decision that `run`, `status`, the sensor and the
nightly schedule all call (DESIGN.md section 6).

The facts come from the files and the Dagster instance (`orchestration.facts` gathers them);
the decision knows nothing of either. An output needs a run when the version of its inputs
(`core.versions`) differs from the one it was last published with. A slide whose last attempt
failed or was refused rests until one of the versions that attempt saw changes: a rerun never
gets around a gate, and the daemon never reconverts a refused slide on every tick. A run whose
process died or that was stopped is not a verdict on the inputs and does not rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bms_pipeline.core.versions import InputVersion, digest

SlideVerdict = Literal[
    "not-ready", "skipped", "new", "changed", "stale", "failed", "refused", "up-to-date"
]
INVENTORY_ASSET = "mrxs_slide"


@dataclass(frozen=True)
class Attempt:
    """The newest run of a slide (or of the collection), when it failed."""

    versions: Mapping[str, str]
    """Asset -> the version digest that run attempted (the assets it reached)."""
    reason: str
    refused: bool = False
    """The publication gate refused an output (not a crash or an input error)."""
    retriable: bool = False
    """The process died or the run was stopped: not a verdict on the inputs."""


@dataclass(frozen=True)
class SlideFacts:
    slide_id: str
    ready: bool
    not_ready_reason: str = ""
    skip_reason: str | None = None
    inventoried: bool = False
    """Registered and inventoried at least once."""
    files_changed: bool = False
    """The slide's files (or override files) differ from its last inventory."""
    current: Mapping[str, InputVersion] = field(default_factory=dict[str, InputVersion])
    """Asset -> the version of its inputs now (known once the slide is inventoried)."""
    published: Mapping[str, Mapping[str, str] | None] = field(
        default_factory=dict[str, Mapping[str, str] | None]
    )
    """Asset -> the version parts of its last materialization (None: never materialized)."""
    last_failure: Attempt | None = None
    signature: str = ""
    """The slide files' change detector now (what an inventory attempt is tagged with)."""


@dataclass(frozen=True)
class Decision:
    """Whether a slide (or the collection) needs a run, which assets, and why."""

    key: str
    state: SlideVerdict
    reason: str = ""
    assets: tuple[str, ...] = ()
    """The assets to materialize, in graph order (with `INVENTORY_ASSET` first for a new or
    changed slide, whose other versions are known only after it)."""
    why: Mapping[str, str] = field(default_factory=dict[str, str])
    """Asset -> why it needs a run (`never materialized`, `cells.csv changed`...)."""
    version_key: str = ""
    """A digest of the versions decided on: one request per distinct set of inputs."""

    @property
    def needs_run(self) -> bool:
        return bool(self.assets)


def outdated_assets(
    current: Mapping[str, InputVersion], published: Mapping[str, Mapping[str, str] | None]
) -> dict[str, list[str]]:
    """Asset -> the parts that changed since it was last materialized (every part when it
    never was), for each asset whose version is not the published one; in `current`'s order."""
    outdated: dict[str, list[str]] = {}
    for asset, version in current.items():
        changed = version.changed_parts(published.get(asset))
        if changed:
            outdated[asset] = changed
    return outdated


def rests(last_failure: Attempt | None, current: Mapping[str, InputVersion]) -> bool:
    """The last attempt failed on exactly the inputs of now: trying again would fail again."""
    if last_failure is None or last_failure.retriable or not last_failure.versions:
        return False
    # The inventory's attempt is judged apart (`decide_slide`: its files' signature).
    attempted = {a: d for a, d in last_failure.versions.items() if a != INVENTORY_ASSET}
    return bool(attempted) and all(
        asset in current and current[asset].digest == digest for asset, digest in attempted.items()
    )


def explain(
    outdated: Mapping[str, Sequence[str]], published: Mapping[str, object]
) -> dict[str, str]:
    """Asset -> `never materialized` or `clinical.csv (patient row), code changed`."""
    return {
        asset: "never materialized"
        if published.get(asset) is None
        else f"{', '.join(changed)} changed"
        for asset, changed in outdated.items()
    }


def describe(why: Mapping[str, str]) -> str:
    """`sm_series: clinical.csv (patient row) changed; ann_series: cells.csv changed`."""
    return "; ".join(f"{asset}: {reason}" for asset, reason in why.items())


def version_key(current: Mapping[str, InputVersion]) -> str:
    return digest({asset: v.digest for asset, v in current.items()})


def decide_slide(facts: SlideFacts, slide_assets: Sequence[str]) -> Decision:
    """The decision for one slide; `slide_assets` are its assets in graph order."""
    sid = facts.slide_id
    if facts.skip_reason is not None:
        return Decision(sid, "skipped", f"skipped in collection.yaml: {facts.skip_reason}")
    if not facts.ready:
        return Decision(sid, "not-ready", facts.not_ready_reason)
    failure = facts.last_failure
    if (not facts.inventoried or facts.files_changed) and (
        failure is not None
        and not failure.retriable
        and failure.versions.get(INVENTORY_ASSET) == facts.signature
    ):
        # Its inventory failed on these very files: it would fail again.
        return Decision(
            sid, "failed", f"{failure.reason} (rests until its inputs or the code change)"
        )
    if not facts.inventoried:
        return Decision(sid, "new", "new slide", tuple(slide_assets))
    if facts.files_changed:
        return Decision(sid, "changed", "slide files changed on disk", (INVENTORY_ASSET,))
    if rests(facts.last_failure, facts.current):
        assert facts.last_failure is not None
        state: SlideVerdict = "refused" if facts.last_failure.refused else "failed"
        return Decision(
            sid, state, f"{facts.last_failure.reason} (rests until its inputs or the code change)"
        )
    outdated = outdated_assets(facts.current, facts.published)
    if not outdated:
        return Decision(sid, "up-to-date")
    ordered = tuple(a for a in slide_assets if a in outdated)
    why = explain(outdated, facts.published)
    return Decision(sid, "stale", describe(why), ordered, why, version_key(facts.current))


def decide_collection(
    current: Mapping[str, InputVersion],
    published: Mapping[str, Mapping[str, str] | None],
    last_failure: Attempt | None = None,
    key: str = "(collection)",
) -> Decision:
    """The decision for the collection's tables and reports (same rules as a slide's)."""
    if rests(last_failure, current):
        assert last_failure is not None
        return Decision(
            key, "failed", f"{last_failure.reason} (rests until its inputs or the code change)"
        )
    outdated = outdated_assets(current, published)
    if not outdated:
        return Decision(key, "up-to-date")
    why = explain(outdated, published)
    return Decision(key, "stale", describe(why), tuple(outdated), why, version_key(current))


def slides_to_withdraw(
    published: set[str], present: set[str], skipped: Mapping[str, str]
) -> dict[str, str]:
    """Published slides that are no longer inputs, with the reason: removed (or renamed)
    from raw/slides, or skipped in collection.yaml."""
    withdraw: dict[str, str] = {}
    for sid in sorted(published):
        if sid in skipped:
            withdraw[sid] = f"skipped in collection.yaml: {skipped[sid]}"
        elif sid not in present:
            withdraw[sid] = "no longer under raw/slides (removed or renamed)"
    return withdraw


def collection_build_due(any_slide_ready: bool, any_withdrawn: bool) -> bool:
    """Whether a run over the slides goes on to the collection-wide tables and reports: when
    a slide was ready (converted, fresh, refused or failed: the published files and patients
    are the tables' inputs) or withdrawn. Which of them then run is `decide_collection`'s."""
    return any_slide_ready or any_withdrawn
