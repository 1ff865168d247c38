"""Several checks of one asset in one step (`defs/check_steps.py`), run by real Dagster."""

from collections.abc import Iterator

import dagster as dg

from bms_pipeline.defs.check_steps import Check, check_specs, evaluate_selected
from bms_pipeline.defs.resources import BmsPipelineResource

CALLS: list[str] = []


@dg.asset
def table() -> dg.MaterializeResult:
    return dg.MaterializeResult()


@dg.asset(deps=[table])
def report() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def rows_match(context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource):
    """Rows match their source."""
    CALLS.append("rows_match")
    return dg.AssetCheckResult(passed=True, metadata={"rows": 3}, description="3 rows")


def source_readable(context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource):
    """The source can be read."""
    CALLS.append("source_readable")
    if context.op_execution_context.op_config.get("unreadable"):
        raise OSError("source.csv: permission denied")
    return dg.AssetCheckResult(passed=True)


def no_free_text(context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource):
    """No free-text column."""
    CALLS.append("no_free_text")
    bad = bool(context.op_execution_context.op_config.get("free_text"))
    return dg.AssetCheckResult(passed=not bad, description="column 'notes'" if bad else "none")


CHECKS = (Check(rows_match), Check(source_readable), Check(no_free_text))


@dg.multi_asset_check(
    specs=check_specs(table, CHECKS),
    can_subset=True,
    config_schema={
        "unreadable": dg.Field(bool, default_value=False),
        "free_text": dg.Field(bool, default_value=False),
    },
)
def table_checks(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> Iterator[dg.AssetCheckResult]:
    yield from evaluate_selected(context, bms, table, CHECKS)


def _run(tmp_path, config: dict | None = None, selection=None) -> dg.ExecuteInProcessResult:
    CALLS.clear()
    return dg.materialize(
        [table, report, table_checks],
        resources={"bms": BmsPipelineResource(data_root=str(tmp_path))},
        run_config={"ops": {"table_checks": {"config": config or {}}}},
        selection=selection,
        raise_on_error=False,
    )


def test_each_check_keeps_its_name_description_and_blocking_flag() -> None:
    specs = {spec.name: spec for spec in table_checks.check_specs}
    assert sorted(specs) == ["no_free_text", "rows_match", "source_readable"]
    assert all(spec.blocking and spec.asset_key == table.key for spec in specs.values())
    assert specs["rows_match"].description == "Rows match their source."


def test_all_checks_report_in_one_step_with_their_own_results(tmp_path) -> None:
    result = _run(tmp_path)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert sorted(evaluations) == ["no_free_text", "rows_match", "source_readable"]
    assert all(e.asset_key == table.key and e.passed for e in evaluations.values())
    assert evaluations["rows_match"].metadata["rows"].value == 3
    check_steps = {e.step_key for e in result.all_events if e.is_step_start} - {"table", "report"}
    assert check_steps == {"table_checks"}


def test_a_failed_check_blocks_what_is_downstream(tmp_path) -> None:
    result = _run(tmp_path, {"free_text": True})
    assert not result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"rows_match": True, "source_readable": True, "no_free_text": False}
    materialized = {m.asset_key for m in result.get_asset_materialization_events()}
    assert materialized == {table.key}  # report did not run


def test_a_check_that_raises_lets_the_others_report_then_fails_the_step(tmp_path) -> None:
    result = _run(tmp_path, {"unreadable": True})
    assert not result.success
    assert CALLS == ["rows_match", "source_readable", "no_free_text"]
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"rows_match": True, "no_free_text": True}
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "table_checks"
    error = failure.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    assert error is not None and "source.csv: permission denied" in error.message
    assert {m.asset_key for m in result.get_asset_materialization_events()} == {table.key}


def test_one_check_can_be_run_alone(tmp_path) -> None:
    result = _run(
        tmp_path,
        selection=dg.AssetSelection.assets(table).without_checks()
        | dg.AssetSelection.checks(dg.AssetCheckKey(table.key, "no_free_text")),
    )
    assert result.success
    assert CALLS == ["no_free_text"]
    assert [e.check_name for e in result.get_asset_check_evaluations()] == ["no_free_text"]


def test_the_pipeline_keeps_every_check_blocking_and_one_step_per_asset() -> None:
    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.defs.annotations.checks import ann_series_checks
    from bms_pipeline.defs.slides.checks import sm_series_checks
    from bms_pipeline.defs.tables.checks import clinical_tables_checks

    steps = [c.node_def.name for c in (sm_series_checks, ann_series_checks, clinical_tables_checks)]
    assert steps == ["sm_series_checks", "ann_series_checks", "clinical_tables_checks"]
    graph = build_definitions().resolve_asset_graph()
    by_asset: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        by_asset.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
        spec = graph.get_check_spec(key)
        assert spec.blocking, key
        assert spec.description, key
    assert by_asset == {
        "sm_series": {
            "sm_series_matches_source",
            "sm_series_free_of_slide_identifiers",
            "sm_series_thumbnail_matches_pyramid",
        },
        "ann_series": {"ann_counts_match_input", "ann_series_free_of_slide_identifiers"},
        "dicom_validation": {"no_dicom_validation_errors"},
        "clinical_tables": {
            "clinical_patients_match_dicom",
            "clinical_tables_have_no_duplicates_or_free_text",
            "column_metadata_matches_tables",
        },
    }
