"""The slide assets, checks and sensor, run by the real Dagster in-process."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from bms_pipeline.core.synthetic.demo import write_demo_dataset
from bms_pipeline.definitions import build_definitions
from bms_pipeline.defs.partitions import slides_partitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.sensors import new_slides_sensor
from bms_pipeline_tests.helpers import PATIENT, write_test_slide

SLIDE_ID = f"{PATIENT}_1_bm"


def test_slide_job_materializes_a_generated_slide_with_passing_checks(tmp_path: Path) -> None:
    dataset = write_demo_dataset(tmp_path, slides=1, seed=5)
    (slide_id,) = dataset.slides
    defs = build_definitions(str(tmp_path))
    # Launched runs keep a slide's steps in one process (no per-step import cost).
    assert defs.resolve_job_def("slides_job").executor_def.name == "in_process"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(slides_partitions.name, [slide_id])  # pyright: ignore[reportArgumentType]
        result = defs.resolve_job_def("slides_job").execute_in_process(
            partition_key=slide_id, instance=instance
        )
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert evaluations and all(e.passed for e in evaluations)
        (mat,) = result.asset_materializations_for_node("sm_series")
        assert mat.metadata["instances"].value >= 4  # pyright: ignore[reportOperatorIssue]
        assert mat.metadata["levels"].value >= 2  # pyright: ignore[reportOperatorIssue]
        assert mat.metadata["megapixels_per_second"].value > 0  # pyright: ignore[reportOperatorIssue]
        (raw,) = result.asset_materializations_for_node("mrxs_slide")
        # The data version is the content hash shown in the metadata.
        assert raw.tags["dagster/data_version"] == raw.metadata["content_hash"].value  # pyright: ignore[reportOptionalSubscript]
        # Only the allow-listed properties are shown: never the scanner's SLIDE_ID or name.
        shown = json.dumps(raw.metadata["openslide_properties"].value)
        assert "mirax.GENERAL.SLIDE_ID" not in shown and "SLIDE_NAME" not in shown
        assert "openslide.mpp-x" in shown
    assert any(dataset.layout.sm_dir(slide_id).glob("*.dcm"))


def _evaluate_sensor(instance: dg.DagsterInstance, root: Path, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"bms": BmsPipelineResource(data_root=str(root))},
    )
    return new_slides_sensor(context)


def test_sensor_adds_a_new_complete_slide_and_ignores_an_incomplete_one(tmp_path: Path) -> None:
    slides = tmp_path / "raw" / "slides"
    complete = write_test_slide(slides, slide_id=SLIDE_ID)
    other = "FEDCBA9876543210FEDCBA9876543210_1_bm"
    incomplete = write_test_slide(slides, slide_id=other, seed=3)
    (incomplete.mrxs_path.with_suffix("") / "Index.dat").unlink()
    # Both slides were written just now: backdate them so they count as settled.
    for path in slides.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    with dg.instance_for_test() as instance:
        result = _evaluate_sensor(instance, tmp_path)
        assert [r.partition_key for r in result.run_requests] == [complete.mrxs_path.stem]  # pyright: ignore[reportAttributeAccessIssue, reportOptionalIterable, reportOptionalMemberAccess]
        (request,) = result.dynamic_partitions_requests  # pyright: ignore[reportAttributeAccessIssue, reportGeneralTypeIssues, reportOptionalMemberAccess]
        assert list(request.partition_keys) == [SLIDE_ID]


def test_sensor_waits_while_files_are_still_changing(tmp_path: Path) -> None:
    write_test_slide(tmp_path / "raw" / "slides", slide_id=SLIDE_ID)
    with dg.instance_for_test() as instance:
        first = _evaluate_sensor(instance, tmp_path)
        assert first.run_requests == [] and first.dynamic_partitions_requests == []  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
        # Same files on the next tick: the copy has finished.
        second = _evaluate_sensor(instance, tmp_path, cursor=first.cursor)  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
        assert [r.partition_key for r in second.run_requests] == [SLIDE_ID]  # pyright: ignore[reportAttributeAccessIssue, reportOptionalIterable, reportOptionalMemberAccess]


def test_outputs_on_another_filesystem_than_the_inputs(tmp_path: Path) -> None:
    """Inputs on disk, outputs on tmpfs: staging and the final rename stay on the output side."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second local filesystem (tmpfs at /dev/shm) on this machine")
    out_root = Path(tempfile.mkdtemp(dir=shm, prefix="bms-out-"))
    try:
        dataset = write_demo_dataset(tmp_path, slides=1, seed=8)
        (slide_id,) = dataset.slides
        defs = build_definitions(str(tmp_path), output_root=str(out_root))
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(slides_partitions.name, [slide_id])  # pyright: ignore[reportArgumentType]
            result = defs.resolve_job_def("slides_job").execute_in_process(
                partition_key=slide_id, instance=instance
            )
            assert result.success
            assert all(e.passed for e in result.get_asset_check_evaluations())
        assert any((out_root / "dicom" / slide_id / "sm").glob("*.dcm"))
        assert any((out_root / "dicom" / slide_id / "ann").glob("*.dcm"))
        assert (out_root / "validation" / f"{slide_id}.parquet").is_file()
        assert not (tmp_path / "out").exists()
    finally:
        shutil.rmtree(out_root, ignore_errors=True)


def test_loading_the_code_location_imports_no_converter_or_dicom_library() -> None:
    """`dagster dev` and every run worker load the definitions: wsidicomizer, wsidicom,
    pydicom and highdicom load inside the steps that need them, never at load time."""
    import subprocess
    import sys

    code = (
        "import sys, bms_pipeline.definitions; "
        "print(sorted(m for m in ('wsidicomizer', 'wsidicom', 'pydicom', 'highdicom') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
