"""Validate everything written for one slide: each file, each series and the patient's study."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.slide_id import patient_id_of
from bms_pipeline.core.validation.dicom3tools import messages_frame, validate_files


def slide_series_files(layout: DataLayout, slide_id: str) -> dict[str, list[Path]]:
    """Series label (`sm`, `ann/<file stem>`) -> files, for one slide."""
    series: dict[str, list[Path]] = {}
    sm = sorted(layout.sm_dir(slide_id).glob("*.dcm"))
    if sm:
        series["sm"] = sm
    for path in sorted(layout.ann_dir(slide_id).glob("*.dcm")):
        series[f"ann/{path.stem}"] = [path]
    return series


def study_files(layout: DataLayout, patient_id: str) -> list[Path]:
    """Every file of the patient's study: all of that patient's slides."""
    root = layout.dicom_dir
    return sorted(
        path
        for folder in sorted(root.glob(f"{patient_id}_*_bm"))
        for path in folder.rglob("*.dcm")
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def validate_slide(layout: DataLayout, slide_id: str) -> pl.DataFrame:
    """One row per dciodvfy/dcentvfy message for the slide (see dicom3tools.COLUMNS)."""
    files = slide_series_files(layout, slide_id)
    if not files:
        raise FileNotFoundError(f"{layout.slide_dicom_dir(slide_id)}: no DICOM files to validate")
    messages = validate_files(files, study_files(layout, patient_id_of(slide_id)))
    frame = messages_frame(messages, slide_id)
    # Paths relative to the output root, so the results are the same wherever it lies.
    prefix = f"{layout.out.absolute()}{os.sep}"
    return frame.with_columns(
        pl.col(c).str.replace_all(prefix, "", literal=True) for c in ("file", "message")
    )
