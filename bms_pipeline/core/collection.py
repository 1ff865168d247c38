"""collection.yaml: the collection-level facts every output shares (DESIGN.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from bms_pipeline.core.conventions import ConventionError, Conventions


class CollectionConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OtherProtocolId:
    id: str
    issuer: str


@dataclass(frozen=True)
class ClinicalTrial:
    sponsor_name: str
    protocol_id: str
    protocol_name: str
    site_id: str = ""
    site_name: str = ""
    coordinating_center_name: str = ""
    other_protocol_ids: tuple[OtherProtocolId, ...] = ()


@dataclass(frozen=True)
class DeidentificationPolicy:
    """What may survive de-identification; everything defaults to the safe choice."""

    include_label: bool = False
    keep_slide_id: bool = False
    keep_dates: bool = False


@dataclass(frozen=True)
class DetectionAlgorithm:
    """The model that made the nuclei boxes, for the AUTOMATIC ANN series."""

    name: str = "BMDeep nucleus detector"
    version: str = "unspecified"


@dataclass(frozen=True)
class CollectionConfig:
    collection_id: str
    collection_name: str
    title: str
    doi: str
    license: str
    clinical_trial: ClinicalTrial
    study_description: str
    series_description: str
    deidentification: DeidentificationPolicy = field(default_factory=DeidentificationPolicy)
    detection_algorithm: DetectionAlgorithm = field(default_factory=DetectionAlgorithm)
    conventions: Conventions = field(default_factory=Conventions)
    """IDC's published BMDeep conventions by default (`core.conventions`)."""
    keep_patients_without_dicom: bool = False
    """Publish clinical and lab rows of patients without a converted slide (default: leave
    them out and list them; a real lab sheet has more patients than slides)."""
    skip_slides: tuple[tuple[str, str], ...] = ()
    """(slide_id, reason) of slides not to convert (IDC skipped known duplicate scans): listed
    with the reason by `run` and `status`, left alone by the sensor and the schedule, and
    withdrawn if they were published."""

    @property
    def skipped_slides(self) -> dict[str, str]:
        return dict(self.skip_slides)

    @property
    def carried_values(self) -> tuple[str, ...]:
        """The collection's own names, which every output carries on purpose (never leaks,
        even where a MIRAX property equals one of them)."""
        trial = self.clinical_trial
        values = [
            self.collection_id,
            self.collection_name,
            self.title,
            self.doi,
            self.license,
            trial.sponsor_name,
            trial.protocol_id,
            trial.protocol_name,
            trial.site_id,
            trial.site_name,
            trial.coordinating_center_name,
            self.study_description,
            self.series_description,
            self.detection_algorithm.name,
            *(o.id for o in trial.other_protocol_ids),
        ]
        return tuple(v for v in values if v)

    @classmethod
    def load(cls, path: Path) -> CollectionConfig:
        if not path.is_file():
            raise CollectionConfigError(f"{path}: collection.yaml does not exist")
        try:
            raw: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            # One line, file:line:column first (PyYAML's own text spans lines with a caret).
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            reason = (
                " ".join(
                    str(p)
                    for p in (getattr(exc, "context", None), getattr(exc, "problem", None))
                    if p
                )
                or str(exc).splitlines()[0]
            )
            raise CollectionConfigError(f"{where}: not valid YAML: {reason}") from exc
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: Path | str = "collection.yaml"
    ) -> CollectionConfig:
        required = [
            "collection_id",
            "collection_name",
            "title",
            "doi",
            "license",
            "clinical_trial",
            "study_description",
            "series_description",
        ]
        missing = [key for key in required if key not in raw]
        if missing:
            raise CollectionConfigError(f"{source}: missing required keys {missing}")
        trial: dict[str, Any] = dict(raw["clinical_trial"])
        protocol_ids: list[dict[str, Any]] = trial.pop("other_protocol_ids", None) or []
        others = tuple(OtherProtocolId(**o) for o in protocol_ids)
        try:
            clinical_trial = ClinicalTrial(**trial, other_protocol_ids=others)
            deid = DeidentificationPolicy(**_section(raw, "deidentification"))
            algorithm = DetectionAlgorithm(**_section(raw, "detection_algorithm"))
            conventions = Conventions.from_dict(raw.get("conventions"), str(source))
        except ConventionError as exc:
            raise CollectionConfigError(str(exc)) from exc
        except TypeError as exc:
            raise CollectionConfigError(f"{source}: {exc}") from exc
        return cls(
            collection_id=str(raw["collection_id"]),
            collection_name=str(raw["collection_name"]),
            title=str(raw["title"]),
            doi=str(raw["doi"]),
            license=str(raw["license"]),
            clinical_trial=clinical_trial,
            study_description=str(raw["study_description"]),
            series_description=str(raw["series_description"]),
            deidentification=deid,
            detection_algorithm=algorithm,
            conventions=conventions,
            keep_patients_without_dicom=bool(raw.get("keep_patients_without_dicom", False)),
            skip_slides=_skip_slides(raw.get("skip_slides"), source),
        )


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """A mapping section of collection.yaml, empty when absent or null."""
    return raw.get(key) or {}


def _skip_slides(raw: Any, source: Path | str) -> tuple[tuple[str, str], ...]:
    """`skip_slides: {<slide_id>: <reason>}`; every slide needs a reason."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise CollectionConfigError(
            f"{source}: skip_slides must map each slide id to its reason, got {type(raw).__name__}"
        )
    reasons = cast("dict[object, object]", raw)  # isinstance binds no type arguments
    missing = sorted(str(k) for k, v in reasons.items() if not str(v or "").strip())
    if missing:
        raise CollectionConfigError(f"{source}: skip_slides: give a reason for {missing}")
    return tuple(sorted((str(k), str(v).strip()) for k, v in reasons.items()))


DEFAULT_COLLECTION_YAML = """\
collection_id: bonemarrowwsi_pediatricleukemia
collection_name: BoneMarrowWSI-PediatricLeukemia
title: A Comprehensive Dataset of Bone Marrow Aspirate Smear Whole Slide Images (synthetic stand-in)
doi: "10.5281/zenodo.14933087"
license: CC BY 4.0
clinical_trial:
  sponsor_name: Uni Hospital Erlangen, Fraunhofer MEVIS, Uni Erlangen-Nuremberg
  protocol_id: BoneMarrowWSI-PediatricLeukemia
  protocol_name: BoneMarrowWSI-PediatricLeukemia
  site_id: ""
  site_name: ""
  coordinating_center_name: University Hospital Erlangen
  other_protocol_ids:
    - {id: "doi:10.5281/zenodo.14933087", issuer: DOI}
study_description: Bone marrow aspirate smear, pediatric leukemia
series_description: Bone marrow aspirate smear, May-Gruenwald-Giemsa stain
deidentification: {include_label: false, keep_slide_id: false, keep_dates: false}
detection_algorithm: {name: BMDeep nucleus detector (synthetic), version: "1.0"}
"""
