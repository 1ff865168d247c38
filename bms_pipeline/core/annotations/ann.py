"""One slide's boxes as DICOM Microscopy Bulk Simple Annotations (ANN), built with highdicom.

Series (DESIGN.md section 4), each one file ``<name>.dcm`` in ``out/dicom/<slide>/ann/``,
described, numbered and attributed as IDC published BMDeep (`core.conventions`):

- ``rois``: the monolayer regions (group ``region_of_interest``), ROI id as a measurement;
- ``session_<k>`` (k = 0, 1, ...): cells with at least k+1 expert labels, with label k;
- ``consensus``: every cell with an expert label and its consensus (the source's
  ``original_consensus_label`` by default, or the recomputed rule), ``no_consensus_found``
  included;
- ``unlabeled``: cells no expert labelled (IDC: the slides without sessions), MANUAL, with
  the generic label ``haematological_structure``;
- ``detections``: the detector's nucleus boxes, AUTOMATIC, with the score as Probability
  (ours: IDC has published none, and a model's output is not MANUAL).

Cell series have one group per (label, inside/outside an ROI), in label-table order, inside
first; every group carries the cell id, and inside groups the ROI id, as measurements, and
the label's display colour. All annotations are 2D (SCOORD) RECTANGLEs with corners TL, TR,
BR, BL in float32 pixel coordinates of the base-level SM instance they reference. A series
with no rows for the slide is not written (an ANN object needs at least one group, and an
empty group would claim an annotation session that never happened); `AnnResult.skipped`
names it.

Every UID is derived from the collection, slide, series name and group (label and ROI side),
so a rerun reproduces them; ContentDate/Time are copied from the SM instance and the
wall-clock timestamps highdicom adds are left out, so a rerun on the same inputs writes the
same bytes. The files are written to staging and the whole ``ann/`` folder replaces the previous
one in one rename, so readers see the old series or the new ones, never a mix.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import numpy as np
import polars as pl
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from bms_pipeline.core.annotations.inputs import (
    DISAGREEMENT_SCHEMA,
    CellBoxes,
    DetectionBoxes,
    RoiBoxes,
    SlideAnnotations,
    read_slide_annotations,
)
from bms_pipeline.core.annotations.labels import (
    DETECTION_LABEL,
    ROI_LABEL,
    LabelCode,
    LabelTable,
    cell_labels,
)
from bms_pipeline.core.atomic_outputs import replace_dir_atomically
from bms_pipeline.core.conventions import AnnConventions
from bms_pipeline.core.dicom.files import read_dataset, write_dataset
from bms_pipeline.core.dicom.publication import GateProblem, PublicationRefused
from bms_pipeline.core.dicom.uids import series_uid, stable_uid, study_uid
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.series_numbers import SeriesNumbering
from bms_pipeline.core.slide_id import patient_id_of

__all__ = [
    "ALGORITHM_FAMILY",
    "ANN_SOP_CLASS_UID",
    "CELL_ID",
    "PROBABILITY",
    "REFERENCED_ROI_ID",
    "ROI_ID",
    "AnnResult",
    "GroupContent",
    "SeriesContent",
    "SeriesResult",
    "base_level_dataset",
    "build_ann_series",
    "build_detections_ann",
    "expected_counts",
    "read_back",
    "read_series_content",
    "rectangles",
    "write_ann",
]

ANN_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.91.1"

CELL_ID = Code("0010197", "EFO", "single cell identifier")
"""Cell id measurement: EFO_0010197, written as IDC's BMDeep conversion writes it (value
without the ``EFO_`` prefix), so queries over IDC's existing objects keep working."""
ROI_ID = codes.DCM.ImageRegion
"""The ROI's own id in the ``rois`` series (DCM 111030 "Image Region", as IDC's BMDeep
conversion): DICOM has no "Region of Interest Identifier" concept for an ROI itself."""
REFERENCED_ROI_ID = codes.DCM.ReferencedRegionOfInterestIdentifier
"""The id of the ROI a cell lies in (DCM 130489), on inside-ROI cell groups."""
PROBABILITY = codes.DCM.Probability
"""Detector score (DCM 122157 "Probability")."""
NO_UNITS = codes.UCUM.NoUnits
"""Unit of ids and probabilities (UCUM "1", CID 7181)."""
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
"""Family of the nucleus detector (DCM 123110, CID 7162)."""
EFO_SCHEME = CodingSchemeIdentificationItem(
    designator="EFO",
    name="Experimental Factor Ontology",
    responsible_organization="EMBL-EBI",
)
"""EFO is not among the coding schemes DICOM PS3.16 lists, so the object identifies it."""

DEFAULT_ALGORITHM_NAME = "BMDeep nucleus detector"
DEFAULT_ALGORITHM_VERSION = "unspecified"

_FLOAT32_EXACT = 2**24  # ids above this cannot round-trip through float32 measurements


def _software_version() -> str:
    try:
        return version("bms-pipeline")
    except PackageNotFoundError:
        return "0"


@cache
def converter_commit() -> str:
    """The commit of this converter's checkout (IDC's DeviceSerialNumber of its ANN objects),
    or its version outside a git checkout."""
    try:
        done = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],  # noqa: S607 (git from PATH)
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip() or _software_version()
    except (OSError, subprocess.SubprocessError):
        return _software_version()


def equipment(conventions: AnnConventions) -> tuple[str, str, str, str]:
    """(Manufacturer, model, software versions, serial) of the ANN objects: IDC's
    institution and model; software = the converter (this project), serial = its commit."""
    return (
        conventions.manufacturer,
        conventions.model_name,
        conventions.software_versions or f"bms-pipeline {_software_version()}",
        conventions.device_serial_number or converter_commit(),
    )


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _Measurement:
    name: Code
    values: np.ndarray  # (n,) float


@dataclass(frozen=True)
class _Group:
    label: LabelCode
    inside_roi: bool | None  # None: not a cell group
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in image pixels
    measurements: tuple[_Measurement, ...]
    description: str

    @property
    def key(self) -> str:
        side = "" if self.inside_roi is None else ("/in-roi" if self.inside_roi else "/outside-roi")
        return f"{self.label.label}{side}"


@dataclass(frozen=True)
class _Series:
    name: str
    groups: tuple[_Group, ...]
    algorithm: hd.AlgorithmIdentificationSequence | None = None

    @property
    def rows(self) -> int:
        return sum(len(g.boxes) for g in self.groups)


def rectangles(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> (n, 4, 2) float32 corners TL, TR, BR, BL (column, row)."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {boxes.shape}")
    corners = np.array([[0, 1], [2, 1], [2, 3], [0, 3]])
    return np.ascontiguousarray(boxes[:, corners], dtype=np.float32)


def _check_ids(name: str, ids: np.ndarray) -> np.ndarray:
    """Ids as float measurement values; refuse what float32 would silently round."""
    if len(ids) and (np.abs(ids).max() >= _FLOAT32_EXACT):
        raise ValueError(f"{name} {int(np.abs(ids).max())} is too large for a float32 measurement")
    return ids.astype(np.float64)


def _cell_groups(
    cells: CellBoxes, label_index: np.ndarray, labels: LabelTable, what: str
) -> tuple[_Group, ...]:
    """One group per (label, inside/outside ROI) of the cells with a label (index >= 0).

    Rows keep their file order inside a group; groups follow the label table, inside first.
    """
    member = np.flatnonzero(label_index >= 0)
    if not len(member):
        return ()
    outside = (~cells.inside_roi[member]).astype(np.int64)
    key = label_index[member].astype(np.int64) * 2 + outside
    order = np.argsort(key, kind="stable")
    rows, keys = member[order], key[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    groups: list[_Group] = []
    for start, end in zip(starts, ends, strict=True):
        take = rows[start:end]
        label = labels.codes[int(keys[start]) // 2]
        inside = keys[start] % 2 == 0
        measurements = [_Measurement(CELL_ID, _check_ids("cell_id", cells.cell_id[take]))]
        if inside:
            measurements.append(
                _Measurement(REFERENCED_ROI_ID, _check_ids("roi_id", cells.roi_id[take]))
            )
        where = "inside a monolayer ROI" if inside else "outside every monolayer ROI"
        groups.append(
            _Group(
                label=label,
                inside_roi=bool(inside),
                boxes=cells.boxes[take],
                measurements=tuple(measurements),
                description=f"{what}: {label.label}, cells {where}",
            )
        )
    return tuple(groups)


def _roi_series(rois: RoiBoxes, labels: LabelTable) -> _Series:
    group = _Group(
        label=labels.get(ROI_LABEL),
        inside_roi=None,
        boxes=rois.boxes,
        measurements=(_Measurement(ROI_ID, _check_ids("roi_id", rois.roi_id)),),
        description="Monolayer regions of interest in which cells were classified",
    )
    return _Series("rois", (group,) if len(rois) else ())


def _detection_series(
    detections: DetectionBoxes, labels: LabelTable, algorithm_name: str, algorithm_version: str
) -> _Series:
    group = _Group(
        label=labels.get(DETECTION_LABEL),
        inside_roi=None,
        boxes=detections.boxes,
        measurements=(_Measurement(PROBABILITY, detections.score.astype(np.float64)),),
        description=f"Nuclei detected by {algorithm_name} {algorithm_version}",
    )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=ALGORITHM_FAMILY, version=algorithm_version
    )
    return _Series("detections", (group,) if len(detections) else (), algorithm)


def _series_specs(
    annotations: SlideAnnotations,
    algorithm_name: str,
    algorithm_version: str,
    conventions: AnnConventions,
) -> list[_Series]:
    labels, cells = annotations.labels, annotations.cells
    specs = [_roi_series(annotations.rois, labels)]
    for k in range(cells.session_count):
        specs.append(
            _Series(
                f"session_{k}", _cell_groups(cells, cells.sessions[:, k], labels, f"Session {k}")
            )
        )
    consensus = cells.consensus_of(conventions.consensus_source)
    specs.append(_Series("consensus", _cell_groups(cells, consensus, labels, "Consensus")))
    if conventions.unlabeled_series:
        specs.append(
            _Series(
                "unlabeled", _cell_groups(cells, cells.unlabeled_index(labels), labels, "Unlabeled")
            )
        )
    specs.append(
        _detection_series(annotations.detections, labels, algorithm_name, algorithm_version)
    )
    return specs


def content_key(
    spec: _Series, sm_base: Dataset, series_number: int, conventions: AnnConventions
) -> str:
    """A hash of everything that defines one ANN instance's content: the SM instance it
    references (whose UID follows the image's content and the patient's attributes), each
    group's label, coordinates, measurements and description, the algorithm, the series
    number and the conventions. A moved box, a changed label or measurement gives new
    Series and SOP Instance UIDs to the series that hold it, and only to those."""
    h = hashlib.sha256()
    for value in (
        sm_base.SOPInstanceUID,
        sm_base.StudyInstanceUID,
        spec.name,
        series_number,
        repr(conventions),
        repr(spec.algorithm),
    ):
        h.update(str(value).encode() + b"\x1e")
    for group in spec.groups:
        h.update(f"{group.key}|{group.label!r}|{group.description}".encode())
        h.update(np.ascontiguousarray(group.boxes, dtype=np.float64).tobytes())
        for m in group.measurements:
            h.update(repr(m.name).encode())
            h.update(np.ascontiguousarray(m.values, dtype=np.float64).tobytes())
        h.update(b"\x1d")
    return h.hexdigest()[:16]


def _encode(
    spec: _Series,
    sm_base: Dataset,
    collection_id: str,
    slide_id: str,
    series_number: int,
    conventions: AnnConventions,
) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    """The ANN object of one series, with UIDs derived from its content (`content_key`)."""
    content = content_key(spec, sm_base, series_number, conventions)
    scope = (collection_id, "slide", slide_id, f"ann/{spec.name}", content)
    manual = spec.algorithm is None
    groups: list[hd.ann.AnnotationGroup] = []
    for number, group in enumerate(spec.groups, start=1):
        groups.append(
            hd.ann.AnnotationGroup(
                number=number,
                uid=stable_uid(*scope, "group", group.key),
                label=group.label.label,
                annotated_property_category=group.label.category,
                annotated_property_type=group.label.type,
                graphic_type=hd.ann.GraphicTypeValues.RECTANGLE,
                # (n, 4, 2): one array, not n objects; highdicom takes it as it is.
                graphic_data=rectangles(group.boxes),  # pyright: ignore[reportArgumentType]
                algorithm_type=(
                    hd.ann.AnnotationGroupGenerationTypeValues.MANUAL
                    if manual
                    else hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC
                ),
                algorithm_identification=spec.algorithm,
                measurements=[
                    hd.ann.Measurements(name=m.name, values=m.values, unit=NO_UNITS)
                    for m in group.measurements
                ],
                description=group.description,
                display_color=group.label.cielab if conventions.display_colors else None,
            )
        )
    content_date = sm_base.get("ContentDate") or None
    manufacturer, model, software, serial = equipment(conventions)
    description = conventions.description(spec.name)
    ann = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[sm_base],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
        annotation_groups=groups,
        series_instance_uid=series_uid(collection_id, slide_id, f"ann/{spec.name}", content),
        series_number=series_number,
        sop_instance_uid=stable_uid(*scope, "sop"),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model,
        software_versions=software,
        device_serial_number=serial,
        content_description=description[:64],
        content_label=spec.name.upper()[:16],
        series_description=description,
        coding_schemes=[EFO_SCHEME]
        if any(m.name.scheme_designator == "EFO" for g in spec.groups for m in g.measurements)
        else None,
        content_date=content_date,
        content_time=(sm_base.get("ContentTime") or None) if content_date else None,
    )
    _drop_wall_clock(ann)
    _copy_deidentification(sm_base, ann)
    trial_series = conventions.clinical_trial_series_id(spec.name)
    if trial_series is not None:
        # IDC's Clinical Trial Series module on its BMDeep ANN objects: the session, with an
        # empty coordinating center.
        ann.ClinicalTrialSeriesID = trial_series
        ann.ClinicalTrialCoordinatingCenterName = ""
    return ann


def _copy_deidentification(sm_base: Dataset, ann: Dataset) -> None:
    """The ANN object describes the same de-identified patient as the image it annotates."""
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethodCodeSequence"):
        if keyword in sm_base and keyword not in ann:
            setattr(ann, keyword, copy.deepcopy(sm_base[keyword].value))


def _drop_wall_clock(ann: Dataset) -> None:
    """Remove the timestamps highdicom takes from the clock (all Type 3), so that a rerun on
    the same inputs writes the same bytes: the instance creation date/time and the
    contribution time of the processing equipment (highdicom itself)."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in ann:
            delattr(ann, keyword)
    for item in ann.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        if any(p.CodeValue == "109102" for p in purposes) and "ContributionDateTime" in item:
            del item.ContributionDateTime


def write_ann(ann: Dataset, path: Path) -> int:
    """Write one ANN object as a DICOM file; returns its size in bytes."""
    write_dataset(path, ann, enforce_file_format=True)
    return path.stat().st_size


def build_detections_ann(
    boxes: np.ndarray,
    scores: np.ndarray,
    slide_id: str,
    collection_id: str,
    sm_base_dataset: Dataset,
    algorithm_name: str = DEFAULT_ALGORITHM_NAME,
    algorithm_version: str = DEFAULT_ALGORITHM_VERSION,
    labels: LabelTable | None = None,
    conventions: AnnConventions | None = None,
    numbering: SeriesNumbering | None = None,
) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    """The ``detections`` ANN object straight from arrays (already in image pixels).

    The building block `build_ann_series` uses; exposed for benchmarks and tools that
    hold detections in memory rather than in detections.csv.
    """
    labels = labels or cell_labels()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    detections = DetectionBoxes(
        path=Path("<memory>"),
        records=np.arange(len(boxes), dtype=np.int64),
        boxes=boxes,
        score=scores,
    )
    spec = _detection_series(detections, labels, algorithm_name, algorithm_version)
    if not spec.groups:
        raise ValueError("no detections to encode")
    conventions = conventions or AnnConventions()
    number = (numbering or SeriesNumbering()).for_slide(slide_id, ["detections"])["detections"]
    return _encode(spec, sm_base_dataset, collection_id, slide_id, number, conventions)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SeriesResult:
    """One written ANN series, for Dagster metadata and checks."""

    name: str
    path: Path
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    group_count: int
    rows: int
    counts: dict[str, int]  # label -> rows (inside and outside ROI together)
    bytes: int


@dataclass(frozen=True)
class AnnResult:
    """What `build_ann_series` wrote for one slide."""

    slide_id: str
    ann_dir: Path
    study_instance_uid: str
    series: tuple[SeriesResult, ...]
    skipped: tuple[str, ...]
    """Series with no rows for this slide, hence not written."""
    disagreements: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema=DISAGREEMENT_SCHEMA)
    )
    """Cells whose recomputed consensus differs from ``original_consensus_label``."""
    input_rows: dict[str, int] = field(default_factory=dict[str, int])
    """Rows read per input file (rois, cells, detections)."""
    seconds: float = 0.0

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(s.path for s in self.series)

    @property
    def by_name(self) -> dict[str, SeriesResult]:
        return {s.name: s for s in self.series}

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.series)


def base_level_dataset(sm_dir: Path) -> Dataset:
    """Header (no pixels) of the largest VOLUME instance of an SM series: what ANN refers to.
    A base level concatenated over several instances (`core.dicom.levels`) is referred to by
    its first part, which every part shares the total pixel matrix with."""
    best: tuple[int, int, Dataset] | None = None
    for path in sorted(Path(sm_dir).glob("*.dcm")):
        ds = read_dataset(path, stop_before_pixels=True)
        if "VOLUME" not in ds.get("ImageType", []):
            continue
        area = int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows)
        offset = int(ds.get("ConcatenationFrameOffsetNumber", 0))
        if best is None or (area, -offset) > (best[0], -best[1]):
            best = (area, offset, ds)
    if best is None:
        raise FileNotFoundError(f"{sm_dir}: no VOLUME instance of an SM series")
    return best[2]


def _check_reference(
    sm_base: Dataset, collection_id: str, slide_id: str, image_size: tuple[int, int]
) -> str:
    """The SM instance must be this slide's base level, in this patient's study."""
    expected = study_uid(collection_id, patient_id_of(slide_id))
    if str(sm_base.StudyInstanceUID) != str(expected):
        raise ValueError(
            f"{slide_id}: the SM instance is in study {sm_base.StudyInstanceUID}, "
            f"not in the patient's study {expected}"
        )
    if str(sm_base.SOPClassUID) != VLWholeSlideMicroscopyImageStorage:
        raise ValueError(f"{slide_id}: the referenced instance is not a VL WSI image")
    size = (int(sm_base.TotalPixelMatrixColumns), int(sm_base.TotalPixelMatrixRows))
    if size != tuple(image_size):
        raise ValueError(
            f"{slide_id}: image size {tuple(image_size)} differs from the SM base level {size}"
        )
    return str(expected)


def build_ann_series(
    slide_id: str,
    layout: DataLayout,
    collection_id: str,
    sm_base_dataset: Dataset,
    bounds: tuple[int, int],
    image_size: tuple[int, int],
    algorithm_name: str = DEFAULT_ALGORITHM_NAME,
    algorithm_version: str = DEFAULT_ALGORITHM_VERSION,
    gate: Callable[[Sequence[Path]], Sequence[GateProblem]] | None = None,
    conventions: AnnConventions | None = None,
    numbering: SeriesNumbering | None = None,
) -> AnnResult:
    """Read the slide's annotation rows and write its ANN series to ``ann/`` atomically.

    `bounds` are the slide's (openslide.bounds-x, -y) and `image_size` the (width, height)
    of `sm_base_dataset`, the base-level SM instance every series references. Raises
    `AnnotationInputError` (naming file and line) for bad input, before anything is written,
    and `PublicationRefused` when `gate` finds a problem in the staged files (nothing is
    published then).
    """
    started = time.perf_counter()
    study = _check_reference(sm_base_dataset, collection_id, slide_id, image_size)
    annotations = read_slide_annotations(slide_id, layout.annotations_dir, bounds, image_size)
    conventions = conventions or AnnConventions()
    specs = _series_specs(annotations, algorithm_name, algorithm_version, conventions)
    numbers = (numbering or SeriesNumbering()).for_slide(
        slide_id, [spec.name for spec in specs if spec.groups]
    )
    final = layout.ann_dir(slide_id)
    layout.staging_dir.mkdir(parents=True, exist_ok=True)
    scratch = layout.staging_dir / f"{slide_id}-ann-{uuid.uuid4().hex[:8]}"
    staged = scratch / "ann"
    staged.mkdir(parents=True)
    written: list[tuple[_Series, Dataset, int]] = []
    try:
        for spec in specs:
            if not spec.groups:
                continue
            ann = _encode(
                spec, sm_base_dataset, collection_id, slide_id, numbers[spec.name], conventions
            )
            size = write_ann(ann, staged / f"{spec.name}.dcm")
            written.append((spec, _summary(ann), size))
            del ann
        problems = list(gate(sorted(staged.glob("*.dcm")))) if gate is not None else []
        if problems:
            raise PublicationRefused(slide_id, "ANN", problems)
        replace_dir_atomically(staged, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = tuple(
        SeriesResult(
            name=spec.name,
            path=final / f"{spec.name}.dcm",
            series_instance_uid=str(uids.SeriesInstanceUID),
            sop_instance_uid=str(uids.SOPInstanceUID),
            series_number=int(uids.SeriesNumber),
            group_count=len(spec.groups),
            rows=spec.rows,
            counts=_label_counts((g.label.label, len(g.boxes)) for g in spec.groups),
            bytes=size,
        )
        for spec, uids, size in written
    )
    return AnnResult(
        slide_id=slide_id,
        ann_dir=final,
        study_instance_uid=study,
        series=results,
        skipped=tuple(spec.name for spec in specs if not spec.groups),
        disagreements=annotations.disagreements,
        input_rows={
            "rois": len(annotations.rois),
            "cells": len(annotations.cells),
            "detections": len(annotations.detections),
        },
        seconds=time.perf_counter() - started,
    )


def _summary(ann: Dataset) -> Dataset:
    """The identifying attributes only, so the big object can be freed after writing."""
    out = Dataset()
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber"):
        setattr(out, keyword, getattr(ann, keyword))
    return out


def _label_counts(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label, n in pairs:
        counts[label] = counts.get(label, 0) + n
    return counts


# --------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class GroupContent:
    """One annotation group as read back from a file."""

    number: int
    uid: str
    label: str
    category: Code
    type: Code
    generation_type: str
    algorithm_name: str | None
    algorithm_version: str | None
    algorithm_family: Code | None
    rectangles: np.ndarray  # (n, 4, 2) float32, TL TR BR BL
    measurements: dict[str, np.ndarray]  # code value -> (n,) float32 (nan where absent)

    @property
    def count(self) -> int:
        return int(self.rectangles.shape[0])

    @property
    def inside_roi(self) -> bool | None:
        """For cell groups (they carry the cell id): whether they carry an ROI id."""
        if CELL_ID.value not in self.measurements:
            return None
        return REFERENCED_ROI_ID.value in self.measurements

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) x1, y1, x2, y2 from the TL and BR corners."""
        return np.concatenate([self.rectangles[:, 0, :], self.rectangles[:, 2, :]], axis=1)


@dataclass(frozen=True)
class SeriesContent:
    """One ANN file as read back with `highdicom.ann.annread`."""

    name: str
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    referenced_sop_instance_uid: str
    coordinate_type: str
    groups: tuple[GroupContent, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Label -> annotations, summed over the label's groups."""
        return _label_counts((g.label, g.count) for g in self.groups)


def _code(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def _read_group(group: hd.ann.AnnotationGroup) -> GroupContent:
    n = group.number_of_annotations
    if "DoublePointCoordinatesData" in group:
        flat = np.frombuffer(group.DoublePointCoordinatesData, dtype=np.float64)
    else:
        flat = np.frombuffer(group.PointCoordinatesData, dtype=np.float32)
    names, values, _units = group.get_measurements()
    algorithm = group.algorithm_identification
    item = algorithm[0] if algorithm else None
    return GroupContent(
        number=group.number,
        uid=str(group.uid),
        label=group.label,
        category=_code(group.annotated_property_category),
        type=_code(group.annotated_property_type),
        generation_type=group.algorithm_type.value,
        algorithm_name=str(item.AlgorithmName) if item is not None else None,
        algorithm_version=str(item.AlgorithmVersion) if item is not None else None,
        algorithm_family=_code(item.AlgorithmFamilyCodeSequence[0]) if item is not None else None,
        rectangles=flat.astype(np.float32).reshape(n, 4, 2),
        measurements={str(name.value): values[:, i] for i, name in enumerate(names)},
    )


def _read_ann(path: Path) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    """`hd.ann.annread`, whose path parameter highdicom types as a bare `os.PathLike`."""
    return hd.ann.annread(path)  # pyright: ignore[reportUnknownMemberType]


def read_series_content(ann_dir: Path) -> dict[str, SeriesContent]:
    """Every ``*.dcm`` in `ann_dir`, keyed by series name (the file stem)."""
    out: dict[str, SeriesContent] = {}
    for path in sorted(Path(ann_dir).glob("*.dcm")):
        ann = _read_ann(path)
        out[path.stem] = SeriesContent(
            name=path.stem,
            path=path,
            study_instance_uid=str(ann.StudyInstanceUID),
            series_instance_uid=str(ann.SeriesInstanceUID),
            sop_instance_uid=str(ann.SOPInstanceUID),
            series_number=int(ann.SeriesNumber),
            referenced_sop_instance_uid=str(
                ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            ),
            coordinate_type=str(ann.AnnotationCoordinateType),
            groups=tuple(_read_group(g) for g in ann.get_annotation_groups()),
        )
    return out


# Coordinates per point of a 2D and a 3D annotation, points per RECTANGLE (PS3.3 C.37.1.2).
_COORDINATES = {"2D": 2, "3D": 3}
_RECTANGLE_POINTS = 4


def read_back(ann_dir: Path) -> dict[str, dict[str, int]]:
    """Per series name, label -> annotation count, as the written files hold them.

    Read with pydicom alone, not with highdicom, which wrote them (and whose reader spent
    most of the count check's time validating every measurement item): a group counts the
    rectangles its coordinate data holds, and a group whose NumberOfAnnotations says
    otherwise is an error naming the file and the group."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(Path(ann_dir).glob("*.dcm")):
        ann = read_dataset(path)
        per_point = _COORDINATES[str(ann.AnnotationCoordinateType)]
        pairs: list[tuple[str, int]] = []
        for group in ann.AnnotationGroupSequence:
            label = str(group.AnnotationGroupLabel)
            if group.GraphicType != "RECTANGLE":
                raise ValueError(
                    f"{path}: group {group.AnnotationGroupNumber} ({label}): graphic type "
                    f"{group.GraphicType}, where every group is RECTANGLE"
                )
            if "DoublePointCoordinatesData" in group:
                values = len(group.DoublePointCoordinatesData) // 8
            else:
                values = len(group.PointCoordinatesData) // 4
            held, rest = divmod(values, per_point * _RECTANGLE_POINTS)
            if rest or held != int(group.NumberOfAnnotations):
                raise ValueError(
                    f"{path}: group {group.AnnotationGroupNumber} ({label}): "
                    f"NumberOfAnnotations {group.NumberOfAnnotations}, but coordinates for "
                    f"{values / (per_point * _RECTANGLE_POINTS):g} rectangles"
                )
            pairs.append((label, held))
        out[path.stem] = _label_counts(pairs)
    return out


def expected_counts(
    annotations: SlideAnnotations, conventions: AnnConventions | None = None
) -> dict[str, dict[str, int]]:
    """Per series, label -> rows the inputs call for: what `read_back` must return."""
    conventions = conventions or AnnConventions()
    cells = annotations.cells
    names = annotations.labels.labels
    out: dict[str, dict[str, int]] = {}

    def tally(indices: np.ndarray) -> dict[str, int]:
        values, counts = np.unique(indices[indices >= 0], return_counts=True)
        return {names[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}

    if len(annotations.rois):
        out["rois"] = {ROI_LABEL: len(annotations.rois)}
    for k in range(annotations.cells.session_count):
        out[f"session_{k}"] = tally(annotations.cells.sessions[:, k])
    consensus = tally(cells.consensus_of(conventions.consensus_source))
    if consensus:
        out["consensus"] = consensus
    unlabeled = tally(cells.unlabeled_index(annotations.labels))
    if conventions.unlabeled_series and unlabeled:
        out["unlabeled"] = unlabeled
    if len(annotations.detections):
        out["detections"] = {DETECTION_LABEL: len(annotations.detections)}
    return out


def count_problems(
    expected: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]
) -> list[str]:
    """Where the written ANN series (`read_back`) differ from what the inputs call for
    (`expected_counts`): a label's count per series, or a series nobody asked for."""
    problems = [
        f"{series}/{label}: expected {count}, found {actual.get(series, {}).get(label, 0)}"
        for series, labels in expected.items()
        for label, count in labels.items()
        if actual.get(series, {}).get(label, 0) != count
    ]
    problems += [f"{series}: not expected" for series in actual if series not in expected]
    return problems
