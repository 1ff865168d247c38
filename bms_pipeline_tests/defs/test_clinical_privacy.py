"""The clinical tables through Dagster (issues 25 and 26): names planted in free-text
columns and a lab cell reach neither the outputs nor the instance (SQLite event log, run
storage) nor the console; the run's summary names the patients left out."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from bms_pipeline.cli.summary import print_summary
from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML
from bms_pipeline.definitions import build_definitions
from bms_pipeline.orchestration.operations import run_collection
from bms_pipeline_tests.core.clinical.test_clinical_inputs import PLANTED, _planted


def _root(tmp_path: Path, keep: bool) -> Path:
    layout = _planted(tmp_path)
    (layout.root / "raw" / "slides").mkdir(parents=True, exist_ok=True)
    layout.collection_yaml.write_text(
        DEFAULT_COLLECTION_YAML + f"keep_patients_without_dicom: {str(keep).lower()}\n",
        encoding="utf-8",
    )
    return layout.root


def _bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_planted_names_reach_neither_outputs_nor_instance_nor_console(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path, keep=True)  # every row published: the content must be clean
    defs = build_definitions(str(root))
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        outcome = run_collection(instance, defs, force=True)
        record = instance.fetch_materializations(dg.AssetKey("clinical_tables"), limit=1)
        (materialization,) = [r.asset_materialization for r in record.records]
        assert materialization is not None
        left_out = materialization.metadata["columns_left_out"].value
        assert isinstance(left_out, list) and len(left_out) == 4
        print_summary([outcome], 1.0)
    console = "\n".join(capfd.readouterr())
    stored = _bytes_under(home) + _bytes_under(root / "out")
    assert b"clinical_tables" in _bytes_under(home)  # the scan reads the event log indeed
    for name in (*PLANTED, "Mustermann", "Gruber", "Kinderklinik"):
        assert name.encode() not in stored, name
        assert name not in console, name
    assert "row 4, column 'creatinine' (E)" in console  # reported by its place


def test_the_run_summary_names_the_patients_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path, keep=False)  # no slide converted: every patient is left out
    defs = build_definitions(str(root))
    with dg.instance_for_test() as instance:
        outcome = run_collection(instance, defs, force=True)
    capsys.readouterr()
    print_summary([outcome], 1.0)
    summary = capsys.readouterr().out
    lines = [line for line in summary.splitlines() if "without a converted slide left out" in line]
    assert len(lines) == 2, summary  # the clinical and the laboratory table
    from bms_pipeline_tests.core.clinical.test_clinical_tables import P1, P2, P3, P4

    for patient in (P1, P2, P3, P4):
        assert all(patient in line for line in lines)
    assert "4 patient(s)" in lines[0]
