"""Privacy beyond the DICOM: credentials kept in the process, and the audit of every place
the pipeline writes (outputs, the Dagster instance, logs)."""
