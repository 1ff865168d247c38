"""The nightly automation requests missing slides after the cron tick, and not before."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.defs.automation import automation_sensor
from bms_pipeline.defs.partitions import slides_partitions


def _requested(result) -> dict[str, set[str]]:
    requested: dict[str, set[str]] = {}
    for r in result.results:
        for key in r.true_subset.expensively_compute_asset_partitions():
            requested.setdefault(key.asset_key.to_user_string(), set()).add(key.partition_key)
    return requested


def test_nightly_tick_requests_every_missing_slide(tmp_path: Path) -> None:
    dataset = write_demo_dataset(tmp_path, slides=2, seed=3)
    defs = build_definitions(str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_partitions.name, sorted(dataset.slides))
        evening = dt.datetime(2026, 1, 1, 23, 0, tzinfo=dt.UTC)
        before = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=evening
        )
        assert before.total_requested == 0
        night = dt.datetime(2026, 1, 2, 2, 5, tzinfo=dt.UTC)
        after = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=night, cursor=before.cursor
        )
        requested = _requested(after)
        # The whole per-slide chain for every slide, in one backfill (deps requested in the
        # same tick count as present); the report waits until the slides exist.
        slides = set(dataset.slides)
        assert requested == {
            "mrxs_slide": slides,
            "sm_series": slides,
            "ann_series": slides,
            "dicom_validation": slides,
        }


def test_automation_sensor_is_on_by_default_and_emits_backfills() -> None:
    assert automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert automation_sensor.emit_backfills
