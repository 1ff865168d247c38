"""idc-index's tables of every instance and annotation group under out/dicom.

The questions users ask of IDC (which slides, which stain, which diagnosis, which
annotation groups) answered locally, from the headers alone, with idc-index's own tables:
`index`, `sm_index`, `sm_instance_index`, `ann_index` and `ann_group_index`, with exactly
the columns of idc-index-data's schema files (`schemas`), so idc-index's queries run on
``bms.duckdb`` unchanged. Each value is derived from the headers the way idc-index-data's
SQL derives it from IDC's ``dicom_all`` (aggregations, code tuples ``CSD:VALUE``,
dates as ``YYYY-MM-DD``, SeriesNumber as a string); the columns only IDC knows are null.
Our own facts (file paths, tile sizes, referenced instances) go to the ``bms_*`` tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
from pydicom.dataset import Dataset
from pydicom.uid import UID

from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.index import schemas

SM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
ANN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"

# idc-index-data's short Transfer Syntax names (idc_index.sql), which are not pydicom's
# ("JPEG Baseline", not "JPEG Baseline (Process 1)"); others fall back to pydicom's name.
TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}

# Concept names of the specimen preparation content items idc-index-data reads.
EMBEDDING_MEDIUM = ("SCT", "430863003")
TISSUE_FIXATIVE = ("SCT", "430864009")
USING_SUBSTANCE = ("SCT", "424361007")
_PREPARATION_COLUMNS: dict[tuple[str, str], str] = {
    EMBEDDING_MEDIUM: "embeddingMedium",
    TISSUE_FIXATIVE: "tissueFixative",
    USING_SUBSTANCE: "staining_usingSubstance",
}


@dataclass(frozen=True)
class DicomIndex:
    """idc-index's five tables, and ours (``bms_*``) with what they do not hold."""

    index: pl.DataFrame
    sm_index: pl.DataFrame
    sm_instance_index: pl.DataFrame
    ann_index: pl.DataFrame
    ann_group_index: pl.DataFrame
    bms_instance_paths: pl.DataFrame
    bms_sm_tiles: pl.DataFrame
    bms_ann_references: pl.DataFrame

    def idc_tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in schemas.IDC_TABLES}

    def bms_tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in schemas.BMS_TABLES}

    def tables(self) -> dict[str, pl.DataFrame]:
        return {**self.idc_tables(), **self.bms_tables()}


# --------------------------------------------------------------------------- header values


def _text(ds: Dataset, keyword: str) -> str | None:
    """A header value as a string, None when absent or empty (IDC's NULLIF(x, ''))."""
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: object) -> int | None:
    return None if value in (None, "") else int(value)  # type: ignore[call-overload]


def _iso_date(value: object) -> str | None:
    """DICOM DA ``YYYYMMDD`` as BigQuery prints a DATE (``YYYY-MM-DD``), as idc-index has it."""
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    return f"{text[:4]}-{text[4:6]}-{text[6:]}"


def _first(seq: Sequence[Dataset] | None) -> Dataset | None:
    return seq[0] if seq else None


def _code_str(item: Dataset | None) -> str | None:
    """``CSD:VALUE:MEANING`` of a code item, None if any part is missing (SQL CONCAT)."""
    if item is None:
        return None
    parts = [item.get(k) for k in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")]
    if any(p in (None, "") for p in parts):
        return None
    return ":".join(str(p) for p in parts)


def _split_code(code: str | None) -> tuple[str | None, str | None]:
    """``CSD:VALUE:MEANING`` -> (``CSD:VALUE``, MEANING), as sm_index.sql splits it."""
    if code is None:
        return None, None
    parts = code.split(":")
    return f"{parts[0]}:{parts[1]}", parts[2] if len(parts) > 2 else None


def _code_tuple(item: Dataset | None) -> tuple[str | None, str | None]:
    """(``CSD:VALUE``, MEANING) of a code item, as ann_group_index.sql concatenates it."""
    if item is None or item.get("CodeValue") in (None, ""):
        return None, None
    meaning = item.get("CodeMeaning")
    return (
        f"{item.get('CodingSchemeDesignator', '')}:{item.CodeValue}",
        str(meaning) if meaning is not None else None,
    )


def _preparation(ds: Dataset) -> dict[str, list[str]]:
    """The REPEATED embedding, fixative and staining columns of one instance.

    As idc-index-data does: every content item of every step of the first specimen
    description whose concept name is one of the three codes, distinct, sorted by
    ``MEANING:CSD:VALUE``; the code column holds ``CSD:VALUE``. No item gives ``[]``.
    """
    found: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    description = _first(ds.get("SpecimenDescriptionSequence"))
    steps = description.get("SpecimenPreparationSequence", ()) if description else ()
    for step in steps:
        for item in step.get("SpecimenPreparationStepContentItemSequence", ()):
            for name in item.get("ConceptNameCodeSequence", ()):
                key = (str(name.get("CodingSchemeDesignator", "")), str(name.get("CodeValue", "")))
                if key not in _PREPARATION_COLUMNS:
                    continue
                for concept in item.get("ConceptCodeSequence", ()):
                    found[_PREPARATION_COLUMNS[key]].add(
                        (
                            str(concept.get("CodeMeaning", "")),
                            str(concept.get("CodingSchemeDesignator", "")),
                            str(concept.get("CodeValue", "")),
                        )
                    )
    out: dict[str, list[str]] = {}
    for prefix in _PREPARATION_COLUMNS.values():
        codes = sorted(found.get(prefix, ()), key=lambda c: ":".join(c))
        out[f"{prefix}_CodeMeaning"] = [meaning for meaning, _, _ in codes]
        out[f"{prefix}_code_designator_value_str"] = [f"{csd}:{value}" for _, csd, value in codes]
    return out


def _shared_pixel_spacing(ds: Dataset) -> float | None:
    """PixelSpacing[0] of the shared functional groups (null where a level has none)."""
    groups = _first(ds.get("SharedFunctionalGroupsSequence"))
    measures = _first(groups.get("PixelMeasuresSequence")) if groups else None
    spacing = measures.get("PixelSpacing") if measures else None
    return float(spacing[0]) if spacing else None


def _top_pixel_spacing(ds: Dataset) -> float | None:
    spacing = ds.get("PixelSpacing")
    return float(spacing[0]) if spacing else None


def round_2sf(value: float) -> float:
    """Two significant figures, halves away from zero (BigQuery's ROUND in sm_index.sql)."""
    if value == 0:
        return 0.0
    places = 1 - math.floor(math.log10(abs(value)))
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _lens_power(value: object) -> int | None:
    """ObjectiveLensPower (DS) as INTEGER, halves away from zero (SAFE_CAST AS INT)."""
    if value in (None, ""):
        return None
    return int(Decimal(str(value)).to_integral_value(rounding=ROUND_HALF_UP))


def transfer_syntax_name(uid: str) -> str:
    return TRANSFER_SYNTAX_NAMES.get(uid) or UID(uid).name


def _joined(values: Iterable[str | None], key: Callable[[str], Any] | None = None) -> str | None:
    """STRING_AGG(DISTINCT x, ',' ORDER BY x): null when every value is null."""
    distinct = sorted({v for v in values if v is not None}, key=key)
    return ",".join(distinct) if distinct else None


def _any(values: Iterable[object]) -> object:
    """ANY_VALUE (which skips nulls), made deterministic: the first non-null in file order."""
    return next((v for v in values if v is not None), None)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class _Instance:
    ds: Dataset
    relative: PurePosixPath
    size: int

    @property
    def series_uid(self) -> str:
        return str(self.ds.SeriesInstanceUID)

    @property
    def sop_class(self) -> str:
        return str(self.ds.SOPClassUID)


def _read(dicom_root: Path) -> list[_Instance]:
    root = Path(dicom_root)
    files = sorted(
        p
        for p in root.rglob("*.dcm")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    # Relative to the output root (whose `dicom/` folder `dicom_root` is), so the tables
    # are the same wherever the output root lies.
    return [
        _Instance(
            read_dataset(path, stop_before_pixels=True, defer_size=1024),
            PurePosixPath("dicom", path.relative_to(root).as_posix()),
            path.stat().st_size,
        )
        for path in files
    ]


def _series_row(
    members: list[_Instance], collection_id: str, doi: str, license_name: str
) -> dict[str, object]:
    """One `index` row, aggregated over the series' instances as idc_index.sql does."""
    first = members[0].ds
    datasets = [m.ds for m in members]
    sop_class = str(_any(str(d.SOPClassUID) for d in datasets))
    syntaxes = [str(d.file_meta.TransferSyntaxUID) for d in datasets]
    pixel_repr = (d.get("PixelRepresentation") for d in datasets)
    return {
        "collection_id": collection_id,
        "analysis_result_id": None,
        "PatientID": _text(first, "PatientID"),
        "SeriesInstanceUID": str(first.SeriesInstanceUID),
        "StudyInstanceUID": str(first.StudyInstanceUID),
        "source_DOI": doi,
        "PatientAge": _any(_text(d, "PatientAge") for d in datasets),
        "PatientSex": _any(_text(d, "PatientSex") for d in datasets),
        "StudyDate": _any(_iso_date(d.get("StudyDate")) for d in datasets),
        "StudyDescription": _any(_text(d, "StudyDescription") for d in datasets),
        "BodyPartExamined": _any(_text(d, "BodyPartExamined") for d in datasets),
        "Modality": _text(first, "Modality"),
        "SOPClassUID": sop_class,
        "sop_class_name": UID(sop_class).name,
        "TransferSyntaxUID": _joined(syntaxes),
        "transfer_syntax_name": _joined(transfer_syntax_name(s) for s in syntaxes),
        "PhotometricInterpretation": _joined(
            _text(d, "PhotometricInterpretation") for d in datasets
        ),
        "PixelRepresentation": _joined(None if v is None else str(int(v)) for v in pixel_repr),
        "Manufacturer": _any(_text(d, "Manufacturer") for d in datasets),
        "ManufacturerModelName": _any(_text(d, "ManufacturerModelName") for d in datasets),
        "SeriesDate": _any(_iso_date(d.get("SeriesDate")) for d in datasets),
        "SeriesDescription": _any(_text(d, "SeriesDescription") for d in datasets),
        "SeriesNumber": _any(_text(d, "SeriesNumber") for d in datasets),
        "instanceCount": len({str(d.SOPInstanceUID) for d in datasets}),
        "license_short_name": license_name,
        "series_init_idc_version": None,
        "series_revised_idc_version": None,
        "aws_bucket": None,
        "crdc_series_uuid": None,
        "series_aws_url": None,
        "series_size_MB": sum(m.size for m in members) / 1e6,
    }


def _sm_series_row(members: list[_Instance]) -> dict[str, object]:
    """One `sm_index` row, aggregated over every instance of the series (sm_index.sql)."""
    datasets = [m.ds for m in members]
    preparation: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for ds in datasets:
        prep = _preparation(ds)
        for prefix in _PREPARATION_COLUMNS.values():
            preparation[prefix] |= set(
                zip(
                    prep[f"{prefix}_CodeMeaning"],
                    prep[f"{prefix}_code_designator_value_str"],
                    strict=True,
                )
            )
    row: dict[str, object] = {
        "SeriesInstanceUID": members[0].series_uid,
        "ContainerIdentifier": _any(_text(d, "ContainerIdentifier") for d in datasets),
    }
    for prefix in _PREPARATION_COLUMNS.values():
        codes = sorted(preparation[prefix], key=lambda c: f"{c[0]}:{c[1]}")
        row[f"{prefix}_CodeMeaning"] = [meaning for meaning, _ in codes]
        row[f"{prefix}_code_designator_value_str"] = [code for _, code in codes]
    top = [s for s in map(_top_pixel_spacing, datasets) if s is not None]
    shared = [s for s in map(_shared_pixel_spacing, datasets) if s is not None]
    spacing = min(top) if top else min(shared) if shared else None
    columns = [
        c for c in (_int(d.get("TotalPixelMatrixColumns")) for d in datasets) if c is not None
    ]
    rows = [r for r in (_int(d.get("TotalPixelMatrixRows")) for d in datasets) if r is not None]
    tiles_c = [c for c in (_int(d.get("Columns")) for d in datasets) if c is not None]
    tiles_r = [r for r in (_int(d.get("Rows")) for d in datasets) if r is not None]
    optical = [_first(d.get("OpticalPathSequence")) for d in datasets]

    def smallest(codes: Iterable[str | None]) -> tuple[str | None, str | None]:
        """ARRAY_AGG(DISTINCT code ORDER BY code)[0], split into tuple and meaning."""
        return _split_code(min((c for c in codes if c is not None), default=None))

    def anatomy(ds: Dataset) -> Dataset | None:
        description = _first(ds.get("SpecimenDescriptionSequence"))
        return _first(description.get("PrimaryAnatomicStructureSequence")) if description else None

    def modifier(ds: Dataset) -> Dataset | None:
        structure = anatomy(ds)
        return (
            _first(structure.get("PrimaryAnatomicStructureModifierSequence")) if structure else None
        )

    site = smallest(_code_str(anatomy(d)) for d in datasets)
    site_modifier = smallest(_code_str(modifier(d)) for d in datasets)
    illumination = smallest(
        _code_str(_first(o.get("IlluminationTypeCodeSequence"))) if o else None for o in optical
    )
    diagnosis = smallest(
        _code_str(_first(d.get("AdmittingDiagnosesCodeSequence"))) for d in datasets
    )
    row.update(
        {
            "min_PixelSpacing_2sf": None if spacing is None else round_2sf(spacing),
            "max_TotalPixelMatrixColumns": max(columns) if columns else max(tiles_c, default=None),
            "max_TotalPixelMatrixRows": max(rows) if rows else max(tiles_r, default=None),
            "ObjectiveLensPower": _lens_power(
                _any(o.get("ObjectiveLensPower") if o else None for o in optical)
            ),
            "primaryAnatomicStructure_code_designator_value_str": site[0],
            "primaryAnatomicStructure_CodeMeaning": site[1],
            "primaryAnatomicStructureModifier_code_designator_value_str": site_modifier[0],
            "primaryAnatomicStructureModifier_CodeMeaning": site_modifier[1],
            "illuminationType_code_designator_value_str": illumination[0],
            "illuminationType_CodeMeaning": illumination[1],
            "admittingDiagnosis_code_designator_value_str": diagnosis[0],
            "admittingDiagnosis_CodeMeaning": diagnosis[1],
        }
    )
    return row


def _sm_instance_row(instance: _Instance) -> dict[str, object]:
    ds = instance.ds
    return {
        "SOPInstanceUID": str(ds.SOPInstanceUID),
        "SeriesInstanceUID": instance.series_uid,
        **_preparation(ds),
        "PixelSpacing_0": _shared_pixel_spacing(ds),
        "ImageType": [str(v) for v in ds.get("ImageType", [])],
        "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
        "instance_size": instance.size,
        "TotalPixelMatrixColumns": _int(ds.get("TotalPixelMatrixColumns")),
        "TotalPixelMatrixRows": _int(ds.get("TotalPixelMatrixRows")),
        "crdc_instance_uuid": None,
    }


def _ann_rows(
    instance: _Instance,
) -> tuple[dict[str, object], dict[str, object], list[dict[str, object]]]:
    """The `ann_index`, `bms_ann_references` and `ann_group_index` rows of an ANN instance."""
    ds = instance.ds
    referenced = _first(ds.get("ReferencedSeriesSequence")) or Dataset()
    referenced_instance = _first(referenced.get("ReferencedInstanceSequence")) or Dataset()
    group_items = list(ds.get("AnnotationGroupSequence", []))
    series: dict[str, object] = {
        "SeriesInstanceUID": instance.series_uid,
        "AnnotationCoordinateType": _text(ds, "AnnotationCoordinateType"),
        "referenced_SeriesInstanceUID": _text(referenced, "SeriesInstanceUID"),
    }
    references: dict[str, object] = {
        "SeriesInstanceUID": instance.series_uid,
        "SOPInstanceUID": str(ds.SOPInstanceUID),
        "referenced_SeriesInstanceUID": series["referenced_SeriesInstanceUID"],
        "referenced_SOPInstanceUID": _text(referenced_instance, "ReferencedSOPInstanceUID"),
        "numberOfAnnotationGroups": len(group_items),
    }
    groups: list[dict[str, object]] = []
    for group in group_items:
        category = _code_tuple(_first(group.get("AnnotationPropertyCategoryCodeSequence")))
        prop_type = _code_tuple(_first(group.get("AnnotationPropertyTypeCodeSequence")))
        algorithm = _first(group.get("AnnotationGroupAlgorithmIdentificationSequence")) or Dataset()
        groups.append(
            {
                "SeriesInstanceUID": instance.series_uid,
                "AnnotationGroupNumber": _int(group.get("AnnotationGroupNumber")),
                "AnnotationGroupUID": _text(group, "AnnotationGroupUID"),
                "AnnotationGroupLabel": _text(group, "AnnotationGroupLabel"),
                "AnnotationGroupGenerationType": _text(group, "AnnotationGroupGenerationType"),
                "NumberOfAnnotations": _int(group.get("NumberOfAnnotations")),
                "GraphicType": _text(group, "GraphicType"),
                "AnnotationPropertyCategory_code": category[0],
                "AnnotationPropertyCategory_CodeMeaning": category[1],
                "AnnotationPropertyType_code": prop_type[0],
                "AnnotationPropertyType_CodeMeaning": prop_type[1],
                "AlgorithmName": _text(algorithm, "AlgorithmName"),
            }
        )
    return series, references, groups


def _frame(
    rows: Sequence[Mapping[str, object]], schema: pl.Schema, order: Sequence[str]
) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.sort(list(order), nulls_last=True, maintain_order=True) if rows else frame


def build_dicom_index(
    dicom_root: Path, collection_id: str, doi: str, license_name: str
) -> DicomIndex:
    """Read every `.dcm` under `dicom_root` (headers only) into idc-index's and our tables."""
    instances = _read(dicom_root)
    by_series: dict[str, list[_Instance]] = defaultdict(list)
    for instance in instances:
        by_series[instance.series_uid].append(instance)

    series_rows = [_series_row(m, collection_id, doi, license_name) for m in by_series.values()]
    sm_rows = [
        _sm_series_row(m)
        for m in by_series.values()
        if any(_text(i.ds, "Modality") == "SM" for i in m)
    ]
    sm_instances = [i for i in instances if _text(i.ds, "Modality") == "SM"]
    anns: list[dict[str, object]] = []
    references: list[dict[str, object]] = []
    groups: list[dict[str, object]] = []
    for instance in instances:
        if instance.sop_class == ANN_SOP_CLASS:
            series, reference, items = _ann_rows(instance)
            anns.append(series)
            references.append(reference)
            groups.extend(items)
    paths = [
        {
            "SOPInstanceUID": str(i.ds.SOPInstanceUID),
            "SeriesInstanceUID": i.series_uid,
            "StudyInstanceUID": str(i.ds.StudyInstanceUID),
            "PatientID": _text(i.ds, "PatientID"),
            "Modality": _text(i.ds, "Modality"),
            "slide_id": i.relative.parts[1] if len(i.relative.parts) > 2 else None,
            "series_path": str(i.relative.parent),
            "instance_path": str(i.relative),
            "instance_size": i.size,
        }
        for i in instances
    ]
    tiles = [
        {
            "SOPInstanceUID": str(i.ds.SOPInstanceUID),
            "SeriesInstanceUID": i.series_uid,
            "InstanceNumber": _int(i.ds.get("InstanceNumber")),
            "Columns": _int(i.ds.get("Columns")),
            "Rows": _int(i.ds.get("Rows")),
            "NumberOfFrames": _int(i.ds.get("NumberOfFrames")),
        }
        for i in sm_instances
    ]
    return DicomIndex(
        # Row orders follow idc-index-data's ORDER BY, with the UIDs as tie-breakers.
        index=_frame(
            series_rows,
            schemas.INDEX,
            ("collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
        ),
        sm_index=_frame(
            sm_rows, schemas.SM_INDEX, ("primaryAnatomicStructure_CodeMeaning", "SeriesInstanceUID")
        ),
        sm_instance_index=_frame(
            [_sm_instance_row(i) for i in sm_instances],
            schemas.SM_INSTANCE_INDEX,
            ("TransferSyntaxUID", "SeriesInstanceUID", "SOPInstanceUID"),
        ),
        ann_index=_frame(
            anns,
            schemas.ANN_INDEX,
            ("AnnotationCoordinateType", "referenced_SeriesInstanceUID", "SeriesInstanceUID"),
        ),
        ann_group_index=_frame(
            groups,
            schemas.ANN_GROUP_INDEX,
            (
                "AnnotationPropertyCategory_CodeMeaning",
                "AnnotationPropertyType_CodeMeaning",
                "AlgorithmName",
                "SeriesInstanceUID",
                "AnnotationGroupNumber",
            ),
        ),
        bms_instance_paths=_frame(paths, schemas.BMS_INSTANCE_PATHS, ("instance_path",)),
        bms_sm_tiles=_frame(tiles, schemas.BMS_SM_TILES, ("SeriesInstanceUID", "InstanceNumber")),
        bms_ann_references=_frame(references, schemas.BMS_ANN_REFERENCES, ("SeriesInstanceUID",)),
    )
