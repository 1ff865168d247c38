"""Session fixtures: generated data, converted once, shared by the tests that only read it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from bms_pipeline.core.clinical.patients import PatientClinical
from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.core.dicom.convert import ConversionResult, ConversionSettings
from bms_pipeline.core.dicom.idc_conversion import convert_with_idc_metadata
from bms_pipeline.core.dicom.metadata import (
    SlideContext,
)
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.synthetic.mirax_writer import MiraxGroundTruth
from bms_pipeline_tests.cli_runs import Finished, demo_root, finish, start_run
from bms_pipeline_tests.helpers import PATIENT, write_test_slide

COLLECTION = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
SLIDE_ID = f"{PATIENT}_1_bm"
CLINICAL = PatientClinical(
    patient_id=PATIENT,
    sex="F",
    age="007Y",
    leukemia_type="ALL",
    leukemia_subtype="B-ALL",
    ncit_code="C8644",
    ncit_meaning="B Acute Lymphoblastic Leukemia",
)


def convert_test_slide(
    truth: MiraxGroundTruth,
    out: Path,
    clinical: PatientClinical = CLINICAL,
    slide_id: str = SLIDE_ID,
    collection: CollectionConfig = COLLECTION,
    settings: ConversionSettings | None = None,
) -> ConversionResult:
    context = SlideContext(collection, slide_id, clinical, openslide_properties(truth.mrxs_path))
    return convert_with_idc_metadata(
        truth.mrxs_path, out / "sm", out / ".staging", context, settings
    )


@dataclass(frozen=True)
class ConvertedSlide:
    truth: MiraxGroundTruth
    result: ConversionResult


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertedSlide:
    """One lossless (PNG) test slide converted with the full IDC metadata."""
    root = tmp_path_factory.mktemp("converted")
    truth = write_test_slide(root / "raw", slide_id=SLIDE_ID, image_format="PNG")
    return ConvertedSlide(truth, convert_test_slide(truth, root / "out"))


@dataclass(frozen=True)
class ConcatenatedPair:
    """One slide converted twice with 128 px tiles: each level as one instance, and each
    level of more than 2 frames as a Concatenation of 2-frame parts."""

    truth: MiraxGroundTruth
    single: ConversionResult
    concatenated: ConversionResult


CONCATENATED_TILE, CONCATENATED_FRAMES = 128, 2


@pytest.fixture(scope="session")
def concatenated_pair(tmp_path_factory: pytest.TempPathFactory) -> ConcatenatedPair:
    root = tmp_path_factory.mktemp("concatenated")
    truth = write_test_slide(root / "raw", slide_id=SLIDE_ID)
    single = ConversionSettings(tile_size=CONCATENATED_TILE)
    return ConcatenatedPair(
        truth,
        convert_test_slide(truth, root / "single", settings=single),
        convert_test_slide(
            truth,
            root / "concatenated",
            settings=replace(single, concatenate_frames=CONCATENATED_FRAMES),
        ),
    )


@pytest.fixture(scope="session")
def pipeline_output(tmp_path_factory: pytest.TempPathFactory):
    """The demo collection converted by the pipeline once per session (no DICOMweb server)."""
    import os

    from bms_pipeline_tests.pipeline_output import convert_demo

    saved = os.environ.pop("BMS_DICOMWEB_URL", None)  # converting only; publishing is tested apart
    try:
        return convert_demo(tmp_path_factory.mktemp("pipeline") / "data")
    finally:
        if saved is not None:
            os.environ["BMS_DICOMWEB_URL"] = saved


@pytest.fixture(scope="session")
def concatenated_pipeline_output(tmp_path_factory: pytest.TempPathFactory):
    """The demo collection converted by the pipeline with every level of more than 2 frames
    as a Concatenation (`conventions.sm.concatenate_frames`)."""
    import os

    from bms_pipeline_tests.pipeline_output import convert_demo

    saved = os.environ.pop("BMS_DICOMWEB_URL", None)
    try:
        return convert_demo(
            tmp_path_factory.mktemp("pipeline-concatenated") / "data",
            sm_conventions={"concatenate_frames": CONCATENATED_FRAMES},
        )
    finally:
        if saved is not None:
            os.environ["BMS_DICOMWEB_URL"] = saved


@pytest.fixture(autouse=True)
def _no_dagster_defs_state_from_another_test():
    """Each test starts without a definitions-state storage left by another test.

    Dagster 1.13 keeps the storage of the last instance entered (`with instance:`) in a
    process-wide context variable, holding that instance by weak reference; resolving
    definitions outside an instance then reads it, and a leftover whose instance was
    garbage-collected fails with "Attempted to resolve undefined DagsterInstance weakref"
    (seen once in a full run, in whichever tests came later, never alone). Private API on
    purpose: it is Dagster's own state, reset here only between tests."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@dataclass(frozen=True)
class ConvertedRoot:
    root: Path
    first: Finished  # the run that converted
    second: Finished  # the one that waited for it, then found nothing to do


@pytest.fixture(scope="session")
def cli_converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertedRoot:
    """Two runs started at once on a new root (the instance is created by both at once):
    shared by the concurrency, console, crash and sensor tests, which only read it."""
    root = demo_root(tmp_path_factory.mktemp("cli") / "data")
    procs = [start_run(root), start_run(root)]
    a, b = (finish(p) for p in procs)
    waited = [r for r in (a, b) if "waiting for the other" in r.stdout]
    first, second = (b, a) if waited == [a] else (a, b)
    return ConvertedRoot(root, first, second)
