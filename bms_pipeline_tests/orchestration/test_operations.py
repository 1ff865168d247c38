"""Only what changed reruns; raw/ is never written; failures are per slide."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from bms_pipeline.core.synthetic.demo import DemoDataset, write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.orchestration.operations import (
    plan_slides,
    register_slides,
    run_collection,
    run_slide,
)


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_all(instance: dg.DagsterInstance, defs: dg.Definitions, dataset: DemoDataset):
    plans = plan_slides(instance, defs, dataset.layout)
    register_slides(instance, [p.slide_id for p in plans if p.state != "not-ready"])
    outcomes = {p.slide_id: run_slide(instance, defs, p) for p in plans if p.needs_run}
    return plans, outcomes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return write_demo_dataset(tmp_path_factory.mktemp("ops"), slides=3, seed=11)


def test_second_run_converts_nothing_and_a_changed_slide_alone_reruns(dataset: DemoDataset) -> None:
    raw_before = _hash_tree(dataset.layout.raw)
    defs = build_definitions(str(dataset.layout.root))
    with dg.instance_for_test() as instance:
        plans, outcomes = _run_all(instance, defs, dataset)
        assert {p.state for p in plans} == {"new"}
        assert all(o.ok for o in outcomes.values()), outcomes
        collection = run_collection(instance, defs)
        assert collection.ok and len(collection.checks) >= 3, collection
        with duckdb.connect(str(dataset.layout.duckdb_path), read_only=True) as con:
            tables = {
                row[0] for row in con.execute("select table_name from duckdb_tables()").fetchall()
            }
            index_patients = {
                row[0] for row in con.execute("select distinct PatientID from index").fetchall()
            }
            groups = con.execute("select count(*) from ann_group_index").fetchone()[0]  # pyright: ignore[reportOptionalSubscript]
        assert {
            "index",
            "sm_index",
            "sm_instance_index",
            "ann_index",
            "ann_group_index",
            "validation_messages",
            "column_metadata",
            "table_metadata",
        } <= tables
        assert index_patients == {p.patient_id for p in dataset.patients}
        assert groups > 0

        again = plan_slides(instance, defs, dataset.layout)
        assert {p.state for p in again} == {"up-to-date"}

        # Touch one slide's timestamps only: re-inventoried, same data version, no conversion.
        first, second, third = sorted(dataset.slides)
        sm_files = {s: sorted(dataset.layout.sm_dir(s).iterdir()) for s in dataset.slides}
        mtimes = {s: [p.stat().st_mtime_ns for p in sm_files[s]] for s in dataset.slides}
        folder = dataset.layout.mrxs(first).with_suffix("")
        for path in folder.iterdir():
            os.utime(path)
        (plan,) = [p for p in plan_slides(instance, defs, dataset.layout) if p.slide_id == first]
        assert plan.state == "changed"
        outcome = run_slide(instance, defs, plan)
        assert outcome.ok and outcome.skipped
        assert [p.stat().st_mtime_ns for p in sm_files[first]] == mtimes[first]

        # Change one slide's content: only that slide is stale and reconverted.
        slidedat = dataset.layout.mrxs(second).with_suffix("") / "Slidedat.ini"
        slidedat.write_bytes(
            slidedat.read_bytes().replace(
                b"OBJECTIVE_NAME = Plan-Apochromat 40x",
                b"OBJECTIVE_NAME = Plan-Apochromat 40x/0.95",
            )
        )
        states = {p.slide_id: p.state for p in plan_slides(instance, defs, dataset.layout)}
        assert states == {first: "up-to-date", second: "changed", third: "up-to-date"}
        (plan,) = [p for p in plan_slides(instance, defs, dataset.layout) if p.slide_id == second]
        outcome = run_slide(instance, defs, plan)
        assert outcome.ok and not outcome.skipped and outcome.metadata["instances"] >= 4  # pyright: ignore[reportOperatorIssue]
        for untouched in (first, third):
            assert [p.stat().st_mtime_ns for p in sm_files[untouched]] == mtimes[untouched]
        # A metadata override file for one slide: only that slide reconverts, with it applied.
        overrides = dataset.layout.root / "overrides"
        overrides.mkdir()
        (overrides / f"{third}.json").write_text('{"equipment": {"model_name": "Pannoramic 1000"}}')
        states = {p.slide_id: p.state for p in plan_slides(instance, defs, dataset.layout)}
        assert states == {first: "up-to-date", second: "up-to-date", third: "changed"}
        (plan,) = [p for p in plan_slides(instance, defs, dataset.layout) if p.slide_id == third]
        outcome = run_slide(instance, defs, plan)
        assert outcome.ok and not outcome.skipped
        assert outcome.metadata["metadata_overrides"][0]["sets"] == {  # pyright: ignore[reportIndexIssue]
            "equipment": {"model_name": "Pannoramic 1000"}
        }
        final = plan_slides(instance, defs, dataset.layout)
        assert {p.state for p in final} == {"up-to-date"}, [
            (p.slide_id, p.state, p.detail) for p in final
        ]
    changed = {k for k, v in _hash_tree(dataset.layout.raw).items() if raw_before.get(k) != v}
    assert changed == {f"slides/{second}/Slidedat.ini"}  # only the test's own edit


def test_bad_slides_fail_alone_and_raw_stays_byte_identical(tmp_path: Path) -> None:
    """Truncated data file, missing index, a box outside the image and an orphan clinical
    row: each reported with its file and reason while the good slides convert."""
    dataset = write_demo_dataset(tmp_path, slides=6, seed=12)
    layout = dataset.layout
    # Six slides of five patients; four of them have a single slide.
    single = sorted(
        s for s in dataset.slides if s.endswith("_1_bm") and f"{s[:32]}_2_bm" not in dataset.slides
    )
    good, truncated, no_index, bad_box = single[:4]
    datafile = min(layout.mrxs(truncated).with_suffix("").glob("Data*.dat"))
    datafile.write_bytes(datafile.read_bytes()[:5000])
    (layout.mrxs(no_index).with_suffix("") / "Index.dat").unlink()
    cells = layout.annotations_dir / "cells.csv"
    with cells.open("a", encoding="utf-8") as handle:
        handle.write(
            f'999999,{bad_box},-1,90000,90000,90050,90050,lymphocyte,"lymphocyte,lymphocyte"\n'
        )
    bad_line = len(cells.read_text(encoding="utf-8").splitlines())
    orphan = "F" * 32
    with layout.clinical_csv.open("a", encoding="utf-8") as handle:
        handle.write(f"{orphan};female;9;ALL;;C3167\n")
    raw_before = _hash_tree(layout.raw)
    defs = build_definitions(str(tmp_path))
    with dg.instance_for_test() as instance:
        plans, outcomes = _run_all(instance, defs, dataset)
        by_id = {p.slide_id: p for p in plans}
        assert by_id[truncated].state == "not-ready"
        assert datafile.name in by_id[truncated].detail and "truncated" in by_id[truncated].detail
        assert by_id[no_index].state == "not-ready" and "Index.dat" in by_id[no_index].detail
        assert outcomes[good].ok
        assert not outcomes[bad_box].ok
        assert outcomes[bad_box].error.startswith("ann_series:")
        assert f"cells.csv:{bad_line}" in outcomes[bad_box].error
        assert any(layout.sm_dir(bad_box).glob("*.dcm"))  # its image series still converted
        assert not layout.ann_dir(bad_box).exists()  # and no half-written annotations
        collection = run_collection(instance, defs)
        # The orphan row and the patients of the unconverted slides are left out and listed;
        # what is published all has DICOM, so the check passes.
        assert collection.checks["clinical_patients_match_dicom"] is True
        record = instance.fetch_materializations(dg.AssetKey("clinical_tables"), limit=1).records[0]
        left_out = record.asset_materialization.metadata["patients_left_out"].value  # pyright: ignore[reportOptionalMemberAccess]
        clinical_table = next(t for t in left_out if t.endswith("_clinical"))  # pyright: ignore[reportGeneralTypeIssues, reportOptionalIterable]
        expected = {orphan, truncated[:32], no_index[:32]}
        assert set(left_out[clinical_table]) == expected  # pyright: ignore[reportArgumentType, reportIndexIssue, reportOptionalSubscript]
        published = pl.read_parquet(layout.tables_dir / f"{clinical_table}.parquet")
        assert not expected & set(published["dicom_patient_id"])
    assert _hash_tree(layout.raw) == raw_before
    assert not layout.slide_dicom_dir(truncated).exists()
