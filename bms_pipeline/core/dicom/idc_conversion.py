"""One slide to an IDC-ready SM series: conversion plus the full metadata, in one call.

The Dagster asset, the tests and the benchmarks all convert this way, so what is tested
and measured is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bms_pipeline.core.clinical.patients import clinical_for
from bms_pipeline.core.collection import CollectionConfig
from bms_pipeline.core.dicom.convert import (
    ConversionError,
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
from bms_pipeline.core.dicom.phi import PrivacyPolicy, allowed_values
from bms_pipeline.core.dicom.publication import PublicationGate
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.inventory import find_unreadable_images, openslide_properties
from bms_pipeline.core.slide_id import patient_id_of


def privacy_policy(
    collection: CollectionConfig, slide_id: str, properties: Mapping[str, str]
) -> PrivacyPolicy:
    """What the slide's outputs must not hold, given what they must carry."""
    deid = collection.deidentification
    return PrivacyPolicy.for_slide(
        properties,
        allowed_values(slide_id, patient_id_of(slide_id), collection.carried_values),
        keep_dates=deid.keep_dates,
        keep_slide_id=deid.keep_slide_id,
    )


def publication_gate(
    collection: CollectionConfig,
    slide_id: str,
    properties: Mapping[str, str],
    settings: ConversionSettings | None = None,
) -> PublicationGate:
    """The gate every staged series of the slide must pass (`core.dicom.publication`)."""
    settings = settings or ConversionSettings.for_collection(collection.conventions.sm)
    return PublicationGate(
        privacy=privacy_policy(collection, slide_id, properties),
        deidentification=collection.deidentification,
        expect_thumbnail=settings.include_thumbnail and settings.fast_composite,
    )


def convert_with_idc_metadata(
    mrxs_path: Path,
    sm_dir: Path,
    staging_root: Path,
    context: SlideContext,
    settings: ConversionSettings | None = None,
    content_key: str = "",
    frame_key: str = "",
) -> ConversionResult:
    """Convert with the IDC metadata; the series is published only if it passes the
    publication gate (else `PublicationRefused`). `content_key` and `frame_key` (the series'
    content version and the slide files' version) make its UIDs follow its content."""
    collection = context.collection
    settings = settings or ConversionSettings.for_collection(collection.conventions.sm)
    return convert_slide(
        mrxs_path,
        sm_dir,
        staging_root,
        SlideIdentity(
            collection.collection_id, context.patient_id, context.slide_id, content_key, frame_key
        ),
        metadata=build_wsi_metadata(context),
        metadata_post_processor=build_post_processor(context),
        metadata_pre_processor=build_pre_processor(collection),
        settings=settings,
        gate=publication_gate(
            collection, context.slide_id, context.properties, settings
        ).sm_problems,
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
    content_key: str = "",
    frame_key: str = "",
) -> ConversionResult:
    """Convert `raw/slides/<slide_id>.mrxs` into `out/dicom/<slide_id>/sm/`.

    A failed conversion names the stored images that do not decode: OpenSlide's own message
    does not say which tile it was."""
    try:
        return convert_with_idc_metadata(
            layout.mrxs(slide_id),
            layout.sm_dir(slide_id),
            layout.staging_dir,
            slide_context(layout, collection, slide_id),
            settings,
            content_key,
            frame_key,
        )
    except ConversionError as exc:
        unreadable = find_unreadable_images(layout.mrxs(slide_id))
        if unreadable:
            raise ConversionError(
                f"{exc}; unreadable stored image(s): {'; '.join(unreadable)}"
            ) from exc
        raise
