"""Read back a written SM series: what it holds, for metadata and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.slide_id import patient_id_of


@dataclass(frozen=True)
class SmInstance:
    path: Path
    sop_instance_uid: str
    image_type: tuple[str, ...]
    columns: int
    rows: int
    patient_id: str
    container_identifier: str
    series_instance_uid: str
    study_instance_uid: str
    concatenation_frame_offset: int = 0
    """A part of a concatenated level (`core.dicom.levels`) after the first: more than 0."""

    @property
    def flavor(self) -> str:
        return self.image_type[2] if len(self.image_type) > 2 else ""


def read_series(sm_dir: Path) -> list[SmInstance]:
    instances: list[SmInstance] = []
    for path in sorted(Path(sm_dir).glob("*.dcm")):
        ds = read_dataset(path, stop_before_pixels=True)
        instances.append(
            SmInstance(
                path=path,
                sop_instance_uid=str(ds.SOPInstanceUID),
                image_type=tuple(ds.ImageType),
                columns=int(ds.get("TotalPixelMatrixColumns", ds.Columns)),
                rows=int(ds.get("TotalPixelMatrixRows", ds.Rows)),
                patient_id=str(ds.get("PatientID", "")),
                container_identifier=str(ds.get("ContainerIdentifier", "")),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                concatenation_frame_offset=int(ds.get("ConcatenationFrameOffsetNumber", 0)),
            )
        )
    return instances


def volume_levels(instances: list[SmInstance]) -> list[SmInstance]:
    """VOLUME levels, largest (base) first, each by its instance or its concatenation's
    first part."""
    return sorted(
        (i for i in instances if i.flavor == "VOLUME" and i.concatenation_frame_offset == 0),
        key=lambda i: -i.columns * i.rows,
    )


def sm_series_problems(
    instances: list[SmInstance], slide_id: str, expected_size: tuple[int, int]
) -> list[str]:
    """What is wrong with a written SM series against its source: base level size, a LABEL,
    PatientID and ContainerIdentifier, one series."""
    problems: list[str] = []
    levels = volume_levels(instances)
    if not levels:
        problems.append("no VOLUME instance")
    elif (levels[0].columns, levels[0].rows) != expected_size:
        problems.append(
            f"base level {levels[0].columns}x{levels[0].rows} != bounds {expected_size}"
        )
    if any(i.flavor == "LABEL" for i in instances):
        problems.append("a LABEL instance was written")
    if {i.patient_id for i in instances} != {patient_id_of(slide_id)}:
        problems.append("PatientID differs from the slide's patient id")
    if {i.container_identifier for i in instances} != {slide_id}:
        problems.append("ContainerIdentifier differs from the slide id")
    if len({i.series_instance_uid for i in instances}) != 1:
        problems.append("instances belong to more than one series")
    return problems
