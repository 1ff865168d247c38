"""Dagster's SQLite storage under the data root, as `bms-pipeline run` uses it (`instance.py`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest


@dg.asset
def whole() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def test_the_instance_under_the_data_root_keeps_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from bms_pipeline.cli.config import RunConfig, open_instance
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.orchestration.instance import instance_home

    layout = DataLayout.at(tmp_path / "root")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = open_instance(RunConfig(data_root=layout.root))
    assert "DAGSTER_HOME" not in os.environ  # opened from its folder, not from the environment
    result = dg.materialize([whole], instance=instance)
    assert result.success
    reopened = dg.DagsterInstance.from_config(str(instance_home(layout)))
    assert [r.run_id for r in reopened.get_runs()] == [result.run_id]
    assert reopened.get_latest_materialization_event(whole.key) is not None
