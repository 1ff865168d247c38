"""idc-index-like tables read from the headers of the DICOM files the pipeline wrote."""

from bms_pipeline.core.index.dicom_index import DicomIndex, build_dicom_index

__all__ = ["DicomIndex", "build_dicom_index"]
