"""Deterministic UIDs, so that rerunning a slide reproduces every Study, Series and SOP UID.

Each UID is `generate_uid(entropy_srcs=[collection, scope, role, ...])`: one Study per
patient, one Series per slide and role, and SOP Instance UIDs derived from what makes an
instance unique in its series (image type and pixel matrix size), not from call order,
which is not fixed when wsidicom writes with several threads.
"""

from __future__ import annotations

import threading
from collections import Counter

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from wsidicom.metadata import Pyramid, Series, SlideSample, Study, WsiMetadata
from wsidicom.metadata.uid_generator import UidGenerator


def stable_uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def study_uid(collection_id: str, patient_id: str) -> UID:
    return stable_uid(collection_id, "patient", patient_id, "study")


def series_uid(collection_id: str, slide_id: str, role: str) -> UID:
    return stable_uid(collection_id, "slide", slide_id, "series", role)


class SlideUidGenerator(UidGenerator):
    """UIDs for one slide's SM series, derived from the collection, patient and slide."""

    def __init__(self, collection_id: str, patient_id: str, slide_id: str, role: str = "sm"):
        self._collection_id = collection_id
        self._patient_id = patient_id
        self._slide_id = slide_id
        self._role = role
        self._seen: Counter[tuple[str, ...]] = Counter()
        self._lock = threading.Lock()

    def _uid(self, *parts: str) -> UID:
        return stable_uid(self._collection_id, "slide", self._slide_id, self._role, *parts)

    def study_uid(self, study: Study) -> UID:
        return study_uid(self._collection_id, self._patient_id)

    def series_uid(self, series: Series) -> UID:
        return series_uid(self._collection_id, self._slide_id, self._role)

    def frame_of_reference_uid(self, metadata: WsiMetadata) -> UID:
        # One frame of reference per physical slide, shared by every series on it.
        return stable_uid(self._collection_id, "slide", self._slide_id, "frame-of-reference")

    def dimension_organization_uid(self, metadata: WsiMetadata) -> UID:
        return self._uid("dimension-organization")

    def sample_uid(self, sample: SlideSample) -> UID:
        return self._uid("sample", str(sample.identifier))

    def pyramid_uid(self, pyramid: Pyramid) -> UID:
        return self._uid("pyramid")

    def sop_uid(self, dataset: Dataset) -> UID:
        key = (
            "sop",
            "\\".join(dataset.get("ImageType", [])),
            str(dataset.get("TotalPixelMatrixColumns", dataset.get("Columns", ""))),
            str(dataset.get("TotalPixelMatrixRows", dataset.get("Rows", ""))),
            str(dataset.get("TotalPixelMatrixFocalPlanes", "")),
        )
        with self._lock:
            self._seen[key] += 1
            occurrence = self._seen[key]
        return self._uid(*key, str(occurrence))

    def concatenation_uid(self, dataset: Dataset) -> UID:
        return self._uid("concatenation", str(dataset.get("TotalPixelMatrixColumns", "")))

    def concatenation_source_uid(self, dataset: Dataset) -> UID:
        return self._uid("concatenation-source", str(dataset.get("TotalPixelMatrixColumns", "")))

    def annotation_group_uid(self) -> UID:
        with self._lock:
            self._seen[("annotation-group",)] += 1
            occurrence = self._seen[("annotation-group",)]
        return self._uid("annotation-group", str(occurrence))
