"""bms-pipeline: BMDeep bone-marrow smears to IDC-ready DICOM, as Dagster assets.

Importing any module of the package changes no interpreter, collector or library state: no
exit handler, no event listener, no `gc.freeze` (bms_pipeline_tests/test_import_purity.py).
"""
