"""The checks of one asset evaluated in one step, each still its own check in the UI.

A step of its own costs Dagster about 45 ms of bookkeeping per check (start, output and
success events, the context, the input versions), more than most of our checks take: on
the wide slide (190,528 x 14,376 px) the nine checks after the conversion were nine such
steps. One `multi_asset_check` per asset keeps every check's name, key, blocking flag,
description and history, and still lets one check be run alone (`can_subset`).
"""

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg

from bms_pipeline.defs.resources import BmsPipelineResource

CheckFunction = Callable[[dg.AssetCheckExecutionContext, BmsPipelineResource], dg.AssetCheckResult]


@dataclass(frozen=True)
class Check:
    """One check: a function returning its result for the asset (`check_name` and
    `asset_key` are filled in here). Its name is the check's name, its docstring the
    check's description in the UI."""

    evaluate: CheckFunction
    additional_deps: Sequence[dg.AssetsDefinition] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.evaluate.__name__

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.evaluate.__doc__ or "")


def check_specs(
    asset: dg.AssetsDefinition,
    checks: Sequence[Check],
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetCheckSpec]:
    """Blocking specs: a failed check stops everything downstream of `asset`."""
    return [
        dg.AssetCheckSpec(
            check.name,
            asset=asset,
            description=check.description,
            blocking=True,
            additional_deps=list(check.additional_deps),
            partitions_def=partitions_def,
        )
        for check in checks
    ]


def evaluate_selected(
    context: dg.AssetCheckExecutionContext,
    bms: BmsPipelineResource,
    asset: dg.AssetsDefinition,
    checks: Sequence[Check],
) -> Iterator[dg.AssetCheckResult]:
    """The results of the selected checks, in order. A check that raises does not keep the
    others from being evaluated: it is logged, and the first such error fails the step once
    the rest have reported (as its own step would have)."""
    selected = {key.name for key in context.selected_asset_check_keys}
    first_error: Exception | None = None
    for check in checks:
        if check.name not in selected:
            continue
        try:
            result = check.evaluate(context, bms)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other checks
            context.log.error("check %s could not be evaluated: %s", check.name, exc)
            first_error = first_error or exc
            continue
        yield dg.AssetCheckResult(
            passed=result.passed,
            asset_key=asset.key,
            check_name=check.name,
            metadata=result.metadata,
            severity=result.severity,
            description=result.description,
        )
    if first_error is not None:
        raise first_error


def checks_in_one_step(
    asset: dg.AssetsDefinition,
    checks: Sequence[Check],
    partitions_def: dg.PartitionsDefinition | None = None,
) -> dg.AssetChecksDefinition:
    """`<asset>_checks`: the op that evaluates `checks` of `asset` (or those selected)."""

    @dg.multi_asset_check(
        name=f"{asset.key.to_python_identifier()}_checks",
        specs=check_specs(asset, checks, partitions_def),
        can_subset=True,
    )
    def evaluate(
        context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
    ) -> Iterator[dg.AssetCheckResult]:
        yield from evaluate_selected(context, bms, asset, checks)

    return evaluate
