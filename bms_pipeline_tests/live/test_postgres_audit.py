"""The audit reads a PostgreSQL instance table by table: a run on planted names leaves none
there, and a name planted into a run tag by Dagster's own API is found by table and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.privacy.audit import audit_layout
from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.orchestration.deploy import PostgresTarget
from bms_pipeline_tests.live.test_postgres_cli import cli_run, finish, postgres_instance
from bms_pipeline_tests.privacy import PLANTED, plant_properties

pytestmark = pytest.mark.live


def test_the_audit_reads_every_table_of_a_postgres_instance(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    write_demo_dataset(root, slides=1, seed=4)
    plant_properties(root)
    output = finish(cli_run(root, postgres_url))
    assert "privacy audit: no identifying value found" in output, output[-3000:]
    target = PostgresTarget.parse(postgres_url)
    layout = DataLayout.at(root, root / "out")
    postgres = (target.dagster_url, f"PostgreSQL {target.redacted}")
    assert audit_layout(layout, root / ".dagster", postgres=postgres, env={}).clean

    monkeypatch.setenv("DAGSTER_HOME", str(root / ".dagster"))
    with postgres_instance(root / ".dagster", postgres_url, monkeypatch) as instance:
        run_id = instance.get_runs(limit=1)[0].run_id
        instance.add_run_tags(run_id, {"note": PLANTED["PROJECT_NAME"]})
    report = audit_layout(layout, root / ".dagster", postgres=postgres, env={})
    places = [h.place for h in report.hits]
    # the tag's own table, and the run's record that copies its tags
    assert any(p.startswith(f"PostgreSQL {target.redacted}, table run_tags, row ") for p in places)
    assert all(h.needle.startswith("mirax.GENERAL.PROJECT_NAME of slide") for h in report.hits)
    assert PLANTED["PROJECT_NAME"] not in str(places), places
