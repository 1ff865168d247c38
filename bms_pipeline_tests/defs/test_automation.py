"""The nightly schedule asks the one decision, and requests exactly what it names."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.defs.automation import nightly_backfills
from bms_pipeline.defs.partitions import slides_partitions


def _evaluate(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(
        instance=instance,
        repository_def=defs.get_repository_def(),
        resources={"bms": (defs.resources or {})["bms"]},
    )
    result = nightly_backfills(context)
    return result if isinstance(result, list) else []


def test_nightly_tick_requests_every_registered_slide_that_needs_a_run(tmp_path: Path) -> None:
    dataset = write_demo_dataset(tmp_path, slides=2, seed=3)
    defs = build_definitions(str(tmp_path))
    with dg.instance_for_test() as instance:
        assert _evaluate(defs, instance) == []  # nothing registered: the sensor's job
        instance.add_dynamic_partitions(slides_partitions.name, sorted(dataset.slides))  # pyright: ignore[reportArgumentType]
        requests = _evaluate(defs, instance)
        assert {r.partition_key for r in requests} == set(dataset.slides)
        for request in requests:
            assert request.asset_selection is not None
            assert {k.to_user_string() for k in request.asset_selection} == {
                "mrxs_slide",
                "sm_series",
                "ann_series",
                "dicom_validation",
            }


def test_nightly_schedule_is_on_by_default() -> None:
    assert nightly_backfills.default_status == dg.DefaultScheduleStatus.RUNNING
