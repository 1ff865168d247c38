"""bms-pipeline: BMDeep bone-marrow smears to IDC-ready DICOM, as Dagster assets."""

# First of the exit handlers, so it runs last (see the module); inert unless armed.
from bms_pipeline import process_exit as _process_exit  # noqa: F401
