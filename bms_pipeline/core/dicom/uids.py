"""Deterministic UIDs, so that rerunning a slide reproduces every Study, Series and SOP UID.

Each UID is `generate_uid(entropy_srcs=[collection, scope, role, ...])`: one Study per
patient; one Series per slide, role and content version; SOP Instance UIDs derived from the
same version and what makes an instance unique in its series (image type and pixel matrix
size), not from call order, which is not fixed when wsidicom writes with several threads.

The content version (`core.versions`: the digest of everything that defines the series'
content) is part of every Series and SOP Instance UID: the same inputs give the same UIDs,
and changed content gets new ones, as DICOM requires and as archives and DICOMweb servers
assume (they keep the first object stored under a UID). The Study stays one per patient.
"""

from __future__ import annotations

import threading
from collections import Counter

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from wsidicom.metadata import Pyramid, Series, SlideSample, Study, WsiMetadata  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata.uid_generator import UidGenerator  # pyright: ignore[reportMissingTypeStubs]


def stable_uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def study_uid(collection_id: str, patient_id: str) -> UID:
    return stable_uid(collection_id, "patient", patient_id, "study")


def series_uid(collection_id: str, slide_id: str, role: str, content_key: str = "") -> UID:
    """The series of `role` on a slide, for one version of its content (`content_key`)."""
    parts = [collection_id, "slide", slide_id, "series", role]
    return stable_uid(*parts, *([content_key] if content_key else []))


class SlideUidGenerator(UidGenerator):
    """UIDs for one slide's SM series, derived from the collection, patient, slide and the
    version of the series' content (`content_key`; the frame of reference follows the
    slide's files alone, `frame_key`)."""

    def __init__(
        self,
        collection_id: str,
        patient_id: str,
        slide_id: str,
        role: str = "sm",
        content_key: str = "",
        frame_key: str = "",
    ):
        self._collection_id = collection_id
        self._patient_id = patient_id
        self._slide_id = slide_id
        self._role = role
        self._content_key = content_key
        self._frame_key = frame_key
        self._seen: Counter[tuple[str, ...]] = Counter()
        self._lock = threading.Lock()

    def _uid(self, *parts: str) -> UID:
        key = [self._content_key] if self._content_key else []
        return stable_uid(self._collection_id, "slide", self._slide_id, self._role, *key, *parts)

    def study_uid(self, study: Study) -> UID:
        return study_uid(self._collection_id, self._patient_id)

    def series_uid(self, series: Series) -> UID:
        return series_uid(self._collection_id, self._slide_id, self._role, self._content_key)

    def frame_of_reference_uid(self, metadata: WsiMetadata) -> UID:
        # One frame of reference per scan of the slide, shared by every series on it.
        key = [self._frame_key] if self._frame_key else []
        return stable_uid(self._collection_id, "slide", self._slide_id, "frame-of-reference", *key)

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
        return self._uid("concatenation", *self._level_key(dataset))

    def concatenation_source_uid(self, dataset: Dataset) -> UID:
        return self._uid("concatenation-source", *self._level_key(dataset))

    @staticmethod
    def _level_key(dataset: Dataset) -> tuple[str, ...]:
        """What tells one level's concatenation from another's."""
        return (
            "\\".join(dataset.get("ImageType", [])),
            str(dataset.get("TotalPixelMatrixColumns", "")),
            str(dataset.get("TotalPixelMatrixRows", "")),
        )

    def annotation_group_uid(self) -> UID:
        with self._lock:
            self._seen[("annotation-group",)] += 1
            occurrence = self._seen[("annotation-group",)]
        return self._uid("annotation-group", str(occurrence))
