"""idc-index-shaped tables of every instance and annotation group under out/dicom.

The same questions users ask of IDC (which slides, which stain, which diagnosis, which
annotation groups) answered locally, from the headers alone: one table per level of
detail, named and shaped like idc-index's `index`, `sm_index`, `sm_instance_index`,
`ann_index` and `ann_group_index`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl
import pydicom
from pydicom.dataset import Dataset

SM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
ANN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"

INDEX_SCHEMA = {
    "collection_id": pl.Utf8,
    "PatientID": pl.Utf8,
    "PatientAge": pl.Utf8,
    "PatientSex": pl.Utf8,
    "StudyInstanceUID": pl.Utf8,
    "StudyDescription": pl.Utf8,
    "SeriesInstanceUID": pl.Utf8,
    "SeriesNumber": pl.Int64,
    "SeriesDescription": pl.Utf8,
    "Modality": pl.Utf8,
    "Manufacturer": pl.Utf8,
    "ManufacturerModelName": pl.Utf8,
    "source_DOI": pl.Utf8,
    "license_short_name": pl.Utf8,
    "instanceCount": pl.Int64,
    "series_size_MB": pl.Float64,
    "series_path": pl.Utf8,
}
SM_INDEX_SCHEMA = {
    "SeriesInstanceUID": pl.Utf8,
    "ContainerIdentifier": pl.Utf8,
    "max_TotalPixelMatrixColumns": pl.Int64,
    "max_TotalPixelMatrixRows": pl.Int64,
    "min_PixelSpacing_2sf": pl.Float64,
    "ObjectiveLensPower": pl.Float64,
    "primaryAnatomicStructure_code_designator_value_str": pl.Utf8,
    "primaryAnatomicStructure_CodeMeaning": pl.Utf8,
    "staining_usingSubstance_code_designator_value_str": pl.Utf8,
    "staining_usingSubstance_CodeMeaning": pl.Utf8,
    "illuminationType_code_designator_value_str": pl.Utf8,
    "illuminationType_CodeMeaning": pl.Utf8,
    "admittingDiagnosis_code_designator_value_str": pl.Utf8,
    "admittingDiagnosis_CodeMeaning": pl.Utf8,
}
SM_INSTANCE_SCHEMA = {
    "SOPInstanceUID": pl.Utf8,
    "SeriesInstanceUID": pl.Utf8,
    "ContainerIdentifier": pl.Utf8,
    "ImageType": pl.List(pl.Utf8),
    "TransferSyntaxUID": pl.Utf8,
    "TotalPixelMatrixColumns": pl.Int64,
    "TotalPixelMatrixRows": pl.Int64,
    "Columns": pl.Int64,
    "Rows": pl.Int64,
    "NumberOfFrames": pl.Int64,
    "PixelSpacing_0": pl.Float64,
    "instance_size_bytes": pl.Int64,
    "instance_path": pl.Utf8,
}
ANN_INDEX_SCHEMA = {
    "SOPInstanceUID": pl.Utf8,
    "SeriesInstanceUID": pl.Utf8,
    "SeriesDescription": pl.Utf8,
    "AnnotationCoordinateType": pl.Utf8,
    "referenced_SeriesInstanceUID": pl.Utf8,
    "referenced_SOPInstanceUID": pl.Utf8,
    "numberOfAnnotationGroups": pl.Int64,
}
ANN_GROUP_SCHEMA = {
    "SOPInstanceUID": pl.Utf8,
    "SeriesInstanceUID": pl.Utf8,
    "AnnotationGroupUID": pl.Utf8,
    "AnnotationGroupNumber": pl.Int64,
    "AnnotationGroupLabel": pl.Utf8,
    "AnnotationGroupGenerationType": pl.Utf8,
    "AnnotationPropertyCategory_code_designator_value_str": pl.Utf8,
    "AnnotationPropertyCategory_CodeMeaning": pl.Utf8,
    "AnnotationPropertyType_code_designator_value_str": pl.Utf8,
    "AnnotationPropertyType_CodeMeaning": pl.Utf8,
    "GraphicType": pl.Utf8,
    "NumberOfAnnotations": pl.Int64,
    "AlgorithmName": pl.Utf8,
}


@dataclass(frozen=True)
class DicomIndex:
    index: pl.DataFrame
    sm_index: pl.DataFrame
    sm_instance_index: pl.DataFrame
    ann_index: pl.DataFrame
    ann_group_index: pl.DataFrame

    def tables(self) -> dict[str, pl.DataFrame]:
        return {
            "index": self.index,
            "sm_index": self.sm_index,
            "sm_instance_index": self.sm_instance_index,
            "ann_index": self.ann_index,
            "ann_group_index": self.ann_group_index,
        }


def _code(seq: Iterable[Dataset] | None) -> tuple[str | None, str | None]:
    """`SCHEME:VALUE` and meaning of the first item of a code sequence."""
    for item in seq or []:
        return f"{item.CodingSchemeDesignator}:{item.CodeValue}", str(item.CodeMeaning)
    return None, None


def _stain(ds: Dataset) -> tuple[str | None, str | None]:
    """The substance of the staining step in the specimen preparation sequence."""
    for description in ds.get("SpecimenDescriptionSequence", []):
        for step in description.get("SpecimenPreparationSequence", []):
            items = step.get("SpecimenPreparationStepContentItemSequence", [])
            if not any(_code(i.get("ConceptCodeSequence"))[0] == "SCT:127790008" for i in items):
                continue
            for item in items:
                name = _code(item.get("ConceptNameCodeSequence"))[0]
                if name == "SCT:424361007":  # Using substance
                    return _code(item.get("ConceptCodeSequence"))
    return None, None


def _pixel_spacing(ds: Dataset) -> float | None:
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        return float(measures.PixelSpacing[0])
    except (AttributeError, IndexError, KeyError):
        return None


def _int(value: object) -> int | None:
    return None if value in (None, "") else int(value)  # type: ignore[arg-type]


def build_dicom_index(dicom_root: Path, collection_id: str, doi: str, license_name: str) -> DicomIndex:
    """Read every `.dcm` under `dicom_root` (headers only) into the five tables."""
    series_rows: dict[str, dict[str, object]] = {}
    series_sizes: dict[str, int] = defaultdict(int)
    series_counts: dict[str, int] = defaultdict(int)
    sm_rows: dict[str, dict[str, object]] = {}
    instances: list[dict[str, object]] = []
    anns: list[dict[str, object]] = []
    groups: list[dict[str, object]] = []
    files = sorted(
        p for p in Path(dicom_root).rglob("*.dcm")
        if not any(part.startswith(".") for part in p.relative_to(dicom_root).parts)
    )
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024)
        series_uid = str(ds.SeriesInstanceUID)
        size = path.stat().st_size
        # Relative to the output root (whose `dicom/` folder `dicom_root` is), so the tables
        # are the same wherever the output root lies.
        relative = PurePosixPath("dicom", path.relative_to(dicom_root).as_posix())
        series_sizes[series_uid] += size
        series_counts[series_uid] += 1
        series_rows.setdefault(series_uid, {
            "collection_id": collection_id,
            "PatientID": str(ds.get("PatientID", "")),
            "PatientAge": str(ds.get("PatientAge", "")) or None,
            "PatientSex": str(ds.get("PatientSex", "")) or None,
            "StudyInstanceUID": str(ds.StudyInstanceUID),
            "StudyDescription": str(ds.get("StudyDescription", "")) or None,
            "SeriesInstanceUID": series_uid,
            "SeriesNumber": _int(ds.get("SeriesNumber")),
            "SeriesDescription": str(ds.get("SeriesDescription", "")) or None,
            "Modality": str(ds.get("Modality", "")),
            "Manufacturer": str(ds.get("Manufacturer", "")) or None,
            "ManufacturerModelName": str(ds.get("ManufacturerModelName", "")) or None,
            "source_DOI": doi,
            "license_short_name": license_name,
            "series_path": str(relative.parent),
        })
        sop_class = str(ds.SOPClassUID)
        if sop_class == SM_SOP_CLASS:
            columns = _int(ds.get("TotalPixelMatrixColumns")) or 0
            rows = _int(ds.get("TotalPixelMatrixRows")) or 0
            spacing = _pixel_spacing(ds)
            instances.append({
                "SOPInstanceUID": str(ds.SOPInstanceUID),
                "SeriesInstanceUID": series_uid,
                "ContainerIdentifier": str(ds.get("ContainerIdentifier", "")),
                "ImageType": [str(v) for v in ds.ImageType],
                "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
                "TotalPixelMatrixColumns": columns,
                "TotalPixelMatrixRows": rows,
                "Columns": _int(ds.get("Columns")),
                "Rows": _int(ds.get("Rows")),
                "NumberOfFrames": _int(ds.get("NumberOfFrames")),
                "PixelSpacing_0": spacing,
                "instance_size_bytes": size,
                "instance_path": str(relative),
            })
            row = sm_rows.setdefault(series_uid, {
                "SeriesInstanceUID": series_uid,
                "ContainerIdentifier": str(ds.get("ContainerIdentifier", "")),
                "max_TotalPixelMatrixColumns": 0,
                "max_TotalPixelMatrixRows": 0,
                "min_PixelSpacing_2sf": None,
                "ObjectiveLensPower": None,
            })
            if "VOLUME" not in ds.ImageType:
                continue
            row["max_TotalPixelMatrixColumns"] = max(int(row["max_TotalPixelMatrixColumns"]), columns)  # type: ignore[arg-type]
            row["max_TotalPixelMatrixRows"] = max(int(row["max_TotalPixelMatrixRows"]), rows)  # type: ignore[arg-type]
            if spacing is not None:
                rounded = float(f"{spacing:.2g}")
                current = row["min_PixelSpacing_2sf"]
                row["min_PixelSpacing_2sf"] = rounded if current is None else min(current, rounded)  # type: ignore[type-var]
            optical = ds.get("OpticalPathSequence", [None])[0]
            if optical is not None and "ObjectiveLensPower" in optical:
                row["ObjectiveLensPower"] = float(optical.ObjectiveLensPower)
            anatomy = ds.get("SpecimenDescriptionSequence", [Dataset()])[0].get(
                "PrimaryAnatomicStructureSequence"
            )
            (
                row["primaryAnatomicStructure_code_designator_value_str"],
                row["primaryAnatomicStructure_CodeMeaning"],
            ) = _code(anatomy)
            (
                row["staining_usingSubstance_code_designator_value_str"],
                row["staining_usingSubstance_CodeMeaning"],
            ) = _stain(ds)
            illumination = optical.get("IlluminationTypeCodeSequence") if optical is not None else None
            (
                row["illuminationType_code_designator_value_str"],
                row["illuminationType_CodeMeaning"],
            ) = _code(illumination)
            (
                row["admittingDiagnosis_code_designator_value_str"],
                row["admittingDiagnosis_CodeMeaning"],
            ) = _code(ds.get("AdmittingDiagnosesCodeSequence"))
        elif sop_class == ANN_SOP_CLASS:
            referenced = ds.get("ReferencedSeriesSequence", [Dataset()])[0]
            referenced_instance = referenced.get("ReferencedInstanceSequence", [Dataset()])[0]
            group_items = ds.get("AnnotationGroupSequence", [])
            anns.append({
                "SOPInstanceUID": str(ds.SOPInstanceUID),
                "SeriesInstanceUID": series_uid,
                "SeriesDescription": str(ds.get("SeriesDescription", "")) or None,
                "AnnotationCoordinateType": str(ds.get("AnnotationCoordinateType", "")),
                "referenced_SeriesInstanceUID": str(referenced.get("SeriesInstanceUID", "")) or None,
                "referenced_SOPInstanceUID": str(referenced_instance.get("ReferencedSOPInstanceUID", "")) or None,
                "numberOfAnnotationGroups": len(group_items),
            })
            for group in group_items:
                category = _code(group.get("AnnotationPropertyCategoryCodeSequence"))
                prop_type = _code(group.get("AnnotationPropertyTypeCodeSequence"))
                algorithm = group.get("AnnotationGroupAlgorithmIdentificationSequence", [Dataset()])[0]
                groups.append({
                    "SOPInstanceUID": str(ds.SOPInstanceUID),
                    "SeriesInstanceUID": series_uid,
                    "AnnotationGroupUID": str(group.get("AnnotationGroupUID", "")),
                    "AnnotationGroupNumber": _int(group.get("AnnotationGroupNumber")),
                    "AnnotationGroupLabel": str(group.get("AnnotationGroupLabel", "")),
                    "AnnotationGroupGenerationType": str(group.get("AnnotationGroupGenerationType", "")),
                    "AnnotationPropertyCategory_code_designator_value_str": category[0],
                    "AnnotationPropertyCategory_CodeMeaning": category[1],
                    "AnnotationPropertyType_code_designator_value_str": prop_type[0],
                    "AnnotationPropertyType_CodeMeaning": prop_type[1],
                    "GraphicType": str(group.get("GraphicType", "")),
                    "NumberOfAnnotations": _int(group.get("NumberOfAnnotations")),
                    "AlgorithmName": str(algorithm.get("AlgorithmName", "")) or None,
                })
    for uid, row in series_rows.items():
        row["instanceCount"] = series_counts[uid]
        row["series_size_MB"] = round(series_sizes[uid] / 1e6, 3)
    return DicomIndex(
        index=pl.DataFrame(list(series_rows.values()), schema=INDEX_SCHEMA, orient="row"),
        sm_index=pl.DataFrame(list(sm_rows.values()), schema=SM_INDEX_SCHEMA, orient="row"),
        sm_instance_index=pl.DataFrame(instances, schema=SM_INSTANCE_SCHEMA, orient="row"),
        ann_index=pl.DataFrame(anns, schema=ANN_INDEX_SCHEMA, orient="row"),
        ann_group_index=pl.DataFrame(groups, schema=ANN_GROUP_SCHEMA, orient="row"),
    )
