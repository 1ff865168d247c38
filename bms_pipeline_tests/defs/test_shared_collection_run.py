"""The last slide of a serial `run` and the collection tables share one Dagster run
(`run_slide_and_collection`), without changing what either part reports or what the next
run plans: a collection failure does not fail the slide, a slide failure leaves the
collection to a run of its own."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from bms_pipeline.core.synthetic.demo import DemoDataset, write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.orchestration.operations import (
    COLLECTION_JOB,
    SLIDE_AND_COLLECTION_JOB,
    SLIDE_STEPS_TAG,
    collection_asset_keys,
    collection_states,
    plan_slides,
    register_slides,
    run_collection,
    run_slide,
    run_slide_and_collection,
)


def _plans(instance: dg.DagsterInstance, defs: dg.Definitions, dataset: DemoDataset):
    plans = plan_slides(instance, defs, dataset.layout)
    register_slides(instance, [p.slide_id for p in plans])
    return plans


def test_the_last_slide_and_the_collection_tables_share_one_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dataset = write_demo_dataset(tmp_path_factory.mktemp("shared"), slides=2, seed=31)
    defs = build_definitions(str(dataset.layout.root))
    with dg.instance_for_test() as instance:
        first, last = _plans(instance, defs, dataset)
        assert run_slide(instance, defs, first).ok
        slide, collection = run_slide_and_collection(instance, defs, last)
        assert slide.ok, slide
        assert collection is not None and collection.ok, collection
        # Each part reports its own checks, in the one run.
        assert len(slide.checks) == 6 and len(collection.checks) == 3
        assert not set(slide.checks) & set(collection.checks)
        assert slide.metadata["instances"] >= 4 and not collection.metadata
        (run_id,) = collection.run_ids
        assert slide.run_ids[-1] == run_id
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.job_name == SLIDE_AND_COLLECTION_JOB
        assert run.tags["dagster/partition"] == last.slide_id
        assert not instance.get_runs(filters=dg.RunsFilter(job_name=COLLECTION_JOB))
        for key in collection_asset_keys(defs):
            event = instance.get_latest_materialization_event(key)
            assert event is not None and event.run_id == run_id, key
        # The tables were built after the last slide: both slides' patients are indexed.
        index = pl.read_parquet(dataset.layout.tables_dir / "index.parquet")
        assert set(index["PatientID"]) == {p.patient_id for p in dataset.patients}
        # Nothing is left to do, for the slides or the collection.
        assert {p.state for p in plan_slides(instance, defs, dataset.layout)} == {"up-to-date"}
        assert {state for _, state in collection_states(instance, defs)} == {"up-to-date"}
        again = next(
            p for p in plan_slides(instance, defs, dataset.layout) if p.slide_id == last.slide_id
        )
        slide, collection = run_slide_and_collection(instance, defs, again)
        assert slide.skipped and collection is None


def test_a_collection_failure_in_the_shared_run_leaves_the_slide_done(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dataset = write_demo_dataset(tmp_path_factory.mktemp("shared-bad-lab"), slides=1, seed=32)
    workbook = dataset.layout.lab_values_xlsx
    good = workbook.read_bytes()
    workbook.write_bytes(b"not a workbook")  # read by the collection tables only
    defs = build_definitions(str(dataset.layout.root))
    with dg.instance_for_test() as instance:
        (plan,) = _plans(instance, defs, dataset)
        slide, collection = run_slide_and_collection(instance, defs, plan)
        assert slide.ok and not slide.error, slide
        assert collection is not None and not collection.ok
        assert collection.error.startswith("clinical_tables:"), collection.error
        assert workbook.name in collection.error
        run = instance.get_run_by_id(slide.run_ids[-1])
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        assert run.tags.get(SLIDE_STEPS_TAG) == "ok"
        # The slide is done: the next run converts nothing and redoes the collection only.
        (after,) = plan_slides(instance, defs, dataset.layout)
        assert after.state == "up-to-date", after
        workbook.write_bytes(good)
        assert run_collection(instance, defs).ok


def test_a_failed_slide_leaves_the_collection_to_its_own_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dataset = write_demo_dataset(tmp_path_factory.mktemp("shared-bad-box"), slides=1, seed=33)
    (slide_id,) = dataset.slides
    cells = dataset.layout.annotations_dir / "cells.csv"
    with cells.open("a", encoding="utf-8") as handle:  # a box far outside the image
        handle.write(
            f'999999,{slide_id},-1,90000,90000,90050,90050,lymphocyte,"lymphocyte,lymphocyte"\n'
        )
    defs = build_definitions(str(dataset.layout.root))
    with dg.instance_for_test() as instance:
        (plan,) = _plans(instance, defs, dataset)
        slide, collection = run_slide_and_collection(instance, defs, plan)
        assert not slide.ok and slide.error.startswith("ann_series:"), slide
        assert collection is None  # the caller rebuilds the collection in a run of its own
        run = instance.get_run_by_id(slide.run_ids[-1])
        assert run is not None and SLIDE_STEPS_TAG not in run.tags
        (after,) = plan_slides(instance, defs, dataset.layout)
        assert after.state in ("missing", "failed"), after
        assert run_collection(instance, defs, force=True).ok
