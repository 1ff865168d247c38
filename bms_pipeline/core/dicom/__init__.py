"""DICOM: deterministic identity, metadata and conversion of MIRAX to VL Whole Slide Microscopy."""
