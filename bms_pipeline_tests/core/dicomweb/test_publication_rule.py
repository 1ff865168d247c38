"""Publish only without validation errors: the rule `dicomweb_series` calls, read from the
slide's verdict as `dicom_validation` writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bms_pipeline.core.atomic_outputs import atomic_write_parquet
from bms_pipeline.core.dicomweb.publish import DicomwebError, ensure_publishable
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.validation.dicom3tools import Level, ValidationMessage, messages_frame

SLIDE = "P_1_bm"


def _verdict(layout: DataLayout, *levels: Level) -> Path:
    messages = [
        ValidationMessage("sm/a.dcm", "sm", "dciodvfy", level, f"message {i}", None)
        for i, level in enumerate(levels)
    ]
    path = layout.validation_parquet(SLIDE)
    atomic_write_parquet(messages_frame(messages, SLIDE), path)
    return path


def test_a_slide_with_warnings_only_may_be_published(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    _verdict(layout)
    ensure_publishable(layout, SLIDE)
    _verdict(layout, "Warning", "Warning")
    ensure_publishable(layout, SLIDE)


def test_a_slide_with_a_validation_error_is_not_published(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    verdict = _verdict(layout, "Warning", "Error", "Error")
    with pytest.raises(DicomwebError) as refused:
        ensure_publishable(layout, SLIDE)
    assert str(refused.value) == f"{SLIDE}: not published, 2 validation error(s) in {verdict}"


def test_a_slide_never_validated_is_not_published(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ensure_publishable(DataLayout(tmp_path), SLIDE)
