"""The IDC metadata of an SM series: wsidicom's model plus a post-processor for the rest.

`build_wsi_metadata` gives the user metadata that overrides what wsidicomizer reads from
the MIRAX file; `strip_identifying_source_metadata` removes what the file says about
the slide's identity (SLIDE_NAME becomes SeriesDescription and SLIDE_ID becomes
ContainerIdentifier in wsidicomizer) before it is merged; `build_post_processor` adds
the attributes wsidicom does not model.
"""

from __future__ import annotations

from dataclasses import replace

from pydicom import Dataset
from wsidicom.metadata import Patient, Series, Slide, Study, WsiMetadata
from wsidicomizer.metadata import WsiDicomizerMetadata

from bms_pipeline.core.collection import CollectionConfig


def sm_series_number(slide_number: int) -> int:
    """SeriesNumbers unique within a patient's study: 100 per slide, SM first, ANN after."""
    return 100 * slide_number + 1


def slide_number_of(slide_id: str) -> int:
    return int(slide_id.split("_")[1])


def build_wsi_metadata(collection: CollectionConfig, patient_id: str, slide_id: str) -> WsiMetadata:
    """User metadata that overrides the file's: identity, descriptions and the container."""
    return WsiDicomizerMetadata(
        study=Study(identifier=patient_id[:16], description=collection.study_description),
        series=Series(
            number=sm_series_number(slide_number_of(slide_id)),
            description=collection.series_description,
        ),
        patient=Patient(identifier=patient_id, name=patient_id),
        slide=Slide(identifier=slide_id),
    )


def strip_identifying_source_metadata(metadata: WsiDicomizerMetadata) -> WsiDicomizerMetadata:
    """Drop the slide name (it can carry a patient name) and the scanner's slide id."""
    return replace(
        metadata,
        series=replace(metadata.series, description=None),
        slide=replace(metadata.slide, identifier=None),
    )


def build_post_processor(collection: CollectionConfig, patient_id: str):
    """Attributes wsidicom does not model (filled out by the IDC metadata work)."""

    def post_process(dataset: Dataset, metadata: WsiMetadata) -> Dataset:
        dataset.PatientIdentityRemoved = "YES"
        return dataset

    return post_process
