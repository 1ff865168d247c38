"""Column names, order and types of the index tables.

The five idc-index tables (`index`, `sm_index`, `sm_instance_index`, `ann_index`,
`ann_group_index`) are exactly the ``*_schema.json`` files of the ``idc-index-data`` wheel
(a test compares them column for column), so that every query written for idc-index runs
on ``bms.duckdb`` unchanged. Everything of ours that IDC's schemas lack lives in the
``bms_*`` tables, keyed by the same UIDs, never as extra columns of IDC's tables.
"""

from __future__ import annotations

import polars as pl

S = pl.String
I = pl.Int64  # noqa: E741 (BigQuery INTEGER; the one-letter names keep the schemas tabular)
F = pl.Float64  # BigQuery FLOAT
REPEATED_S = pl.List(pl.String)

INDEX = pl.Schema(
    {
        "collection_id": S,
        "analysis_result_id": S,
        "PatientID": S,
        "SeriesInstanceUID": S,
        "StudyInstanceUID": S,
        "source_DOI": S,
        "PatientAge": S,
        "PatientSex": S,
        "StudyDate": S,
        "StudyDescription": S,
        "BodyPartExamined": S,
        "Modality": S,
        "SOPClassUID": S,
        "sop_class_name": S,
        "TransferSyntaxUID": S,
        "transfer_syntax_name": S,
        "PhotometricInterpretation": S,
        "PixelRepresentation": S,
        "Manufacturer": S,
        "ManufacturerModelName": S,
        "SeriesDate": S,
        "SeriesDescription": S,
        "SeriesNumber": S,
        "instanceCount": I,
        "license_short_name": S,
        "series_init_idc_version": I,
        "series_revised_idc_version": I,
        "aws_bucket": S,
        "crdc_series_uuid": S,
        "series_aws_url": S,
        "series_size_MB": F,
    }
)
"""idc-index's `index` (idc-index-data's ``idc_index_schema.json``): one row per series."""

_PREPARATION = {
    "embeddingMedium_CodeMeaning": REPEATED_S,
    "embeddingMedium_code_designator_value_str": REPEATED_S,
    "tissueFixative_CodeMeaning": REPEATED_S,
    "tissueFixative_code_designator_value_str": REPEATED_S,
    "staining_usingSubstance_CodeMeaning": REPEATED_S,
    "staining_usingSubstance_code_designator_value_str": REPEATED_S,
}

SM_INDEX = pl.Schema(
    {
        "SeriesInstanceUID": S,
        "ContainerIdentifier": S,
        **_PREPARATION,
        "min_PixelSpacing_2sf": F,
        "max_TotalPixelMatrixColumns": I,
        "max_TotalPixelMatrixRows": I,
        "ObjectiveLensPower": I,
        "primaryAnatomicStructure_code_designator_value_str": S,
        "primaryAnatomicStructure_CodeMeaning": S,
        "primaryAnatomicStructureModifier_code_designator_value_str": S,
        "primaryAnatomicStructureModifier_CodeMeaning": S,
        "illuminationType_code_designator_value_str": S,
        "illuminationType_CodeMeaning": S,
        "admittingDiagnosis_code_designator_value_str": S,
        "admittingDiagnosis_CodeMeaning": S,
    }
)
"""idc-index's `sm_index`: one row per SM series."""

SM_INSTANCE_INDEX = pl.Schema(
    {
        "SOPInstanceUID": S,
        "SeriesInstanceUID": S,
        **_PREPARATION,
        "PixelSpacing_0": F,
        "ImageType": REPEATED_S,
        "TransferSyntaxUID": S,
        "instance_size": I,
        "TotalPixelMatrixColumns": I,
        "TotalPixelMatrixRows": I,
        "crdc_instance_uuid": S,
    }
)
"""idc-index's `sm_instance_index`: one row per SM instance."""

ANN_INDEX = pl.Schema(
    {
        "SeriesInstanceUID": S,
        "AnnotationCoordinateType": S,
        "referenced_SeriesInstanceUID": S,
    }
)
"""idc-index's `ann_index`: one row per ANN series (IDC assumes one instance each)."""

ANN_GROUP_INDEX = pl.Schema(
    {
        "SeriesInstanceUID": S,
        "AnnotationGroupNumber": I,
        "AnnotationGroupUID": S,
        "AnnotationGroupLabel": S,
        "AnnotationGroupGenerationType": S,
        "NumberOfAnnotations": I,
        "GraphicType": S,
        "AnnotationPropertyCategory_code": S,
        "AnnotationPropertyCategory_CodeMeaning": S,
        "AnnotationPropertyType_code": S,
        "AnnotationPropertyType_CodeMeaning": S,
        "AlgorithmName": S,
    }
)
"""idc-index's `ann_group_index`: one row per annotation group."""

IDC_TABLES: dict[str, pl.Schema] = {
    "index": INDEX,
    "sm_index": SM_INDEX,
    "sm_instance_index": SM_INSTANCE_INDEX,
    "ann_index": ANN_INDEX,
    "ann_group_index": ANN_GROUP_INDEX,
}
"""Our table name -> schema; idc-index-data names `index`'s schema file ``idc_index``."""

IDC_ONLY_COLUMNS: dict[str, tuple[str, ...]] = {
    "index": (
        "analysis_result_id",  # BMDeep is original data, not an analysis result
        "series_init_idc_version",
        "series_revised_idc_version",
        "aws_bucket",
        "crdc_series_uuid",
        "series_aws_url",
    ),
    "sm_instance_index": ("crdc_instance_uuid",),
}
"""Columns only IDC can fill (its releases, buckets and CRDC UUIDs): always null here."""

BMS_INSTANCE_PATHS = pl.Schema(
    {
        "SOPInstanceUID": S,
        "SeriesInstanceUID": S,
        "StudyInstanceUID": S,
        "PatientID": S,
        "Modality": S,
        "slide_id": S,
        "series_path": S,
        "instance_path": S,
        "instance_size": I,
    }
)
"""Ours: where every instance lies, relative to the output root (``dicom/<slide>/...``)."""

BMS_SM_TILES = pl.Schema(
    {
        "SOPInstanceUID": S,
        "SeriesInstanceUID": S,
        "InstanceNumber": I,
        "Columns": I,
        "Rows": I,
        "NumberOfFrames": I,
    }
)
"""Ours: the tile size and frame count of every SM instance (not in sm_instance_index)."""

BMS_ANN_REFERENCES = pl.Schema(
    {
        "SeriesInstanceUID": S,
        "SOPInstanceUID": S,
        "referenced_SeriesInstanceUID": S,
        "referenced_SOPInstanceUID": S,
        "numberOfAnnotationGroups": I,
    }
)
"""Ours: the SM instance (base level) each ANN instance references, and its group count."""

BMS_TABLES: dict[str, pl.Schema] = {
    "bms_instance_paths": BMS_INSTANCE_PATHS,
    "bms_sm_tiles": BMS_SM_TILES,
    "bms_ann_references": BMS_ANN_REFERENCES,
}

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "index": {
        name: "null: only IDC assigns it (release versions, bucket, CRDC UUID, URL)"
        for name in IDC_ONLY_COLUMNS["index"]
    },
    "sm_instance_index": {"crdc_instance_uuid": "null: only IDC assigns it"},
    "bms_instance_paths": {
        "slide_id": "the slide folder under dicom/ the instance was published in",
        "series_path": "folder of the series, relative to the output root",
        "instance_path": "the instance file, relative to the output root",
        "instance_size": "size of the instance file in bytes",
    },
    "bms_sm_tiles": {
        "Columns": "tile width in pixels",
        "Rows": "tile height in pixels",
        "NumberOfFrames": "number of tiles (frames) in the instance",
    },
    "bms_ann_references": {
        "referenced_SOPInstanceUID": "the SM instance (base level) the annotations refer to",
        "numberOfAnnotationGroups": "number of items in AnnotationGroupSequence",
    },
}
"""BigQuery column descriptions where our value needs one (IDC documents the rest)."""
