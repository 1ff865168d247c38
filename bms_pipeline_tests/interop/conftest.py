"""The same real Orthanc fixtures as the DICOMweb tests (one server per folder and session)."""

from bms_pipeline_tests.dicomweb.conftest import empty_orthanc, orthanc  # noqa: F401 - fixtures
