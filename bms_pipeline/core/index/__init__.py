"""idc-index's tables (and ours beside them) read from the headers of the DICOM files written."""

from bms_pipeline.core.index.dicom_index import DicomIndex, build_dicom_index

__all__ = ["DicomIndex", "build_dicom_index"]
