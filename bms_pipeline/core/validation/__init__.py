"""DICOM conformance checks with dicom3tools (dciodvfy, dcentvfy), kept free of Dagster.

Every message becomes a row, so a slide's validation is data that can be stored, queried and
gated on; only warnings listed as known noise, each with its reason, are marked harmless.
"""
