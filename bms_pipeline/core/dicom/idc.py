"""One slide to an IDC-ready SM series: conversion plus the full metadata, in one call.

The Dagster asset, the tests and the benchmarks all convert this way, so what is tested
and measured is what runs.
"""

from __future__ import annotations

from pathlib import Path

from bms_pipeline.core.clinical.patients import clinical_for
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.convert import (
    ConversionResult,
    ConversionSettings,
    SlideIdentity,
    convert_slide,
)
from bms_pipeline.core.dicom.metadata import (
    SlideContext,
    build_post_processor,
    build_pre_processor,
    build_wsi_metadata,
)
from bms_pipeline.core.dicom.overrides import load_overrides
from bms_pipeline.core.layout import DataLayout, patient_id_of
from bms_pipeline.core.mirax.inventory import openslide_properties


def convert_with_idc_metadata(
    mrxs_path: Path,
    sm_dir: Path,
    staging_root: Path,
    context: SlideContext,
    settings: ConversionSettings | None = None,
) -> ConversionResult:
    collection = context.collection
    return convert_slide(
        mrxs_path,
        sm_dir,
        staging_root,
        SlideIdentity(collection.collection_id, context.patient_id, context.slide_id),
        metadata=build_wsi_metadata(context),
        metadata_post_processor=build_post_processor(context),
        metadata_pre_processor=build_pre_processor(collection),
        settings=settings or ConversionSettings(),
    )


def slide_context(layout: DataLayout, collection: CollectionConfig, slide_id: str) -> SlideContext:
    """The slide's metadata sources: collection.yaml, its clinical row, its MIRAX properties
    and the override files under `<root>/overrides/`."""
    return SlideContext(
        collection=collection,
        slide_id=slide_id,
        clinical=clinical_for(layout.clinical_csv, patient_id_of(slide_id)),
        properties=openslide_properties(layout.mrxs(slide_id)),
        overrides=load_overrides(layout.root, slide_id),
    )


def convert_layout_slide(
    layout: DataLayout,
    collection: CollectionConfig,
    slide_id: str,
    settings: ConversionSettings | None = None,
) -> ConversionResult:
    """Convert `raw/slides/<slide_id>.mrxs` into `out/dicom/<slide_id>/sm/`."""
    return convert_with_idc_metadata(
        layout.mrxs(slide_id),
        layout.sm_dir(slide_id),
        layout.staging_dir,
        slide_context(layout, collection, slide_id),
        settings,
    )
