"""Read back a written SM series: what it holds, for metadata and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom


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

    @property
    def flavor(self) -> str:
        return self.image_type[2] if len(self.image_type) > 2 else ""


def read_series(sm_dir: Path) -> list[SmInstance]:
    instances = []
    for path in sorted(Path(sm_dir).glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
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
            )
        )
    return instances


def volume_levels(instances: list[SmInstance]) -> list[SmInstance]:
    """VOLUME instances, largest (base) first."""
    return sorted((i for i in instances if i.flavor == "VOLUME"), key=lambda i: -i.columns * i.rows)
