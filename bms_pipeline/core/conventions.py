"""The conventions IDC published for BMDeep, as settings whose defaults reproduce them.

Every value here was read off what IDC published for `bonemarrowwsi_pediatricleukemia`:
the `idc_index` table of the `idc-index-data` wheel and the conversion code that produced it
(ImagingDataCommons/conversion_mirax_dicom). Where the published value is a defect the
default corrects it, and says why:

- SeriesNumbers repeat in IDC's objects (session 0 reuses the ROI series' 33, and every
  slide of a patient would reuse the same numbers in the patient's one study), so
  `SeriesNumbering` keeps IDC's numbers for a patient's first slide, moves a number that
  is taken to the next free one, and offsets a patient's slide n by `(n - 1) * slide_stride`;
- IDC writes every MIRAX property but SLIDE_ID into the acquisition context; only the
  allow-listed ones (`core.dicom.phi.ALLOWED_MIRAX_PROPERTIES`) go there here;
- IDC's SM series has no THUMBNAIL; ours has one rendered from the pyramid (viewers show
  the THUMBNAIL as the overview map), unless `sm.thumbnail` is false.

`collection.yaml` overrides any of them under `conventions:` (see the README's table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from bms_pipeline.core.series_numbers import ConventionError, SeriesNumbering, session_number

__all__ = ["ConventionError", "SeriesNumbering"]

ConsensusSource = Literal["source", "recomputed"]
SpecimenIdentifiers = Literal["patient", "slide"]


@dataclass(frozen=True)
class SmConventions:
    """The SM series (IDC: 1024 px tiles, even levels, OVERVIEW, no LABEL)."""

    tile_size: int = 1024
    levels: tuple[int, ...] | None = (0, 2, 4, 6, 8, 10)
    """Pyramid levels kept (those that exist); None keeps every level."""
    thumbnail: bool = True
    manufacturer: str = "Mirax"
    lens: str | None = "High power non-immersion lens"
    """A wsidicom `LenseCode` meaning for the objective (LensesCodeSequence); None: none."""
    acquisition_context: bool = True
    """The allow-listed MIRAX properties as JSON in a TEXT "Comment" (DCM 121106) item."""
    specimen_identifiers: SpecimenIdentifiers = "patient"
    """`patient`: specimen and slide sample carry the patient id (IDC); `slide`:
    `<slide>_aspirate` and `<slide>_smear`."""
    concatenate_frames: int | None = None
    """None: one instance per level, as IDC published (13.5 GB for a full BMDeep level 0).
    N: each level of more than N frames is written as a DICOM Concatenation of instances of
    at most N frames (wsidicomizer's `--concatenate-frames`), for DICOMweb servers that
    cannot hold a 13 GB instance: Orthanc keeps about three times an instance in memory
    and returns nothing past 2 GiB. Split by frames, not bytes, so that each part streams
    to its file (wsidicom buffers a byte-split part in a scratch file and copies it)."""

    def __post_init__(self) -> None:
        frames = self.concatenate_frames
        # As read from YAML: a bool or a float would pass for an int.
        if frames is not None and (type(frames) is not int or frames < 1):
            raise ConventionError(
                f"concatenate_frames must be a whole number of frames of at least 1, or null;"
                f" got a {type(frames).__name__}"
            )


@dataclass(frozen=True)
class AnnConventions:
    """The ANN series (IDC's BMDeep annotation conversion)."""

    manufacturer: str = "University Hospital Erlangen and Fraunhofer MEVIS"
    model_name: str = "BMDeep data conversion"
    software_versions: str | None = None
    """Default: the converter's repository (this project's)."""
    device_serial_number: str | None = None
    """Default: the converter's commit (or its version outside a git checkout)."""
    consensus_source: ConsensusSource = "source"
    """`source`: the source's original_consensus_label (IDC); `recomputed`: the rule of
    `core.annotations.consensus`. Every disagreement is reported either way."""
    unlabeled_series: bool = True
    display_colors: bool = True
    rois_description: str = "Monolayer regions of interest for cell classification"
    session_description: str = "Session {k}: Cell bounding boxes with cell type labels"
    consensus_description: str = "Consensus: cell bounding boxes with cell type labels"
    unlabeled_description: str = "Unlabeled cell bounding boxes"
    detections_description: str = "Nucleus bounding boxes from automatic detection"
    """Ours: IDC has published no detections series."""

    def description(self, series: str) -> str:
        if series.startswith("session_"):
            return self.session_description.format(k=session_number(series))
        return str(getattr(self, f"{series}_description"))

    def clinical_trial_series_id(self, series: str) -> str | None:
        """IDC's ClinicalTrialSeriesID: the session, `consensus` or `detection-only`."""
        if series.startswith("session_"):
            return str(session_number(series))
        return {
            "consensus": "consensus",
            "unlabeled": "detection-only",
            "detections": "detections",
        }.get(series)


@dataclass(frozen=True)
class Conventions:
    sm: SmConventions = field(default_factory=SmConventions)
    ann: AnnConventions = field(default_factory=AnnConventions)
    series_numbers: SeriesNumbering = field(default_factory=SeriesNumbering)

    @classmethod
    def from_dict(
        cls, raw: Mapping[str, Any] | None, source: str = "collection.yaml"
    ) -> Conventions:
        raw = dict(raw or {})
        unknown = set(raw) - {"sm", "ann", "series_numbers"}
        if unknown:
            raise ConventionError(f"{source}: conventions: unknown keys {sorted(unknown)}")
        sm = _build(SmConventions, raw.get("sm"), f"{source}: conventions.sm")
        if sm.levels is not None:
            sm = replace(sm, levels=tuple(int(v) for v in sm.levels))
        return cls(
            sm=sm,
            ann=_build(AnnConventions, raw.get("ann"), f"{source}: conventions.ann"),
            series_numbers=_build(
                SeriesNumbering, raw.get("series_numbers"), f"{source}: conventions.series_numbers"
            ),
        )


def _build(kind: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    names = {f.name for f in fields(kind)}
    raw = dict(raw or {})
    unknown = set(raw) - names
    if unknown:
        raise ConventionError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    try:
        return kind(**raw)
    except (TypeError, ConventionError) as exc:
        raise ConventionError(f"{where}: {exc}") from exc
