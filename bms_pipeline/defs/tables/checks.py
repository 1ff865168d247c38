"""The clinical tables agree with the DICOM and carry no free text that could identify anyone."""

import dagster as dg

from bms_pipeline.defs.tables.assets import clinical_tables, dicom_index
from bms_pipeline.resources import BmsPipelineResource


def _clinical(bms: BmsPipelineResource):  # -> pl.DataFrame
    import polars as pl

    name = f"{bms.collection().collection_id}_clinical.parquet"
    return pl.read_parquet(bms.fetch(bms.layout.tables_dir / name, required=True))


def _dicom_patients(bms: BmsPipelineResource) -> set[str]:
    import polars as pl

    index = pl.read_parquet(bms.fetch(bms.layout.tables_dir / "index.parquet", required=True))
    return set(index["PatientID"].to_list())


@dg.asset_check(asset=clinical_tables, blocking=True, additional_deps=[dicom_index])
def clinical_patients_match_dicom(bms: BmsPipelineResource) -> dg.AssetCheckResult:
    """Every dicom_patient_id is a PatientID in the converted DICOM; a converted patient
    without a clinical row is reported too."""
    from bms_pipeline.core.clinical.tables import (
        dicom_patients_without_clinical,
        patients_missing_in_dicom,
    )
    from bms_pipeline.core.layout import patient_id_of

    clinical = _clinical(bms)
    patients = _dicom_patients(bms)
    # A patient whose slides are under raw/slides but not converted (yet: a `--slide` run,
    # or a slide that failed and is reported as such) is no orphan row.
    with_slides = set()
    for status in bms.scan():
        try:
            with_slides.add(patient_id_of(status.slide_id))
        except ValueError:
            continue
    missing = patients_missing_in_dicom(clinical, patients)
    orphans = [p for p in missing if p not in with_slides]
    pending = [p for p in missing if p in with_slides]
    without = dicom_patients_without_clinical(clinical, patients)
    return dg.AssetCheckResult(
        passed=not orphans and not without,
        severity=dg.AssetCheckSeverity.ERROR if orphans else dg.AssetCheckSeverity.WARN,
        metadata={
            "clinical_rows_without_dicom": dg.MetadataValue.json(orphans),
            "dicom_patients_without_clinical_row": dg.MetadataValue.json(without),
            "patients_with_slides_not_converted": dg.MetadataValue.json(pending),
        },
        description=(
            f"{len(orphans)} clinical patient(s) with no slide and no DICOM, "
            f"{len(without)} DICOM patient(s) with no clinical row"
        ),
    )


@dg.asset_check(asset=clinical_tables, blocking=True)
def clinical_tables_have_no_duplicates_or_free_text(bms: BmsPipelineResource) -> dg.AssetCheckResult:
    """One row per patient in every table, and no name, date or free-text column."""
    import polars as pl

    from bms_pipeline.core.clinical.tables import duplicate_patients, free_text_phi_columns

    layout = bms.layout
    collection_id = bms.collection().collection_id
    bms.fetch(layout.tables_dir)
    problems: list[str] = []
    for table in (f"{collection_id}_clinical", f"{collection_id}_laboratory"):
        frame = pl.read_parquet(layout.tables_dir / f"{table}.parquet")
        problems += [f"{table}: duplicate patient {p}" for p in duplicate_patients(frame)]
        problems += [f"{table}: possible free-text PHI column {c}" for c in free_text_phi_columns(frame)]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems)},
        description="; ".join(problems[:5]) or "no duplicates, no free text",
    )


@dg.asset_check(asset=clinical_tables, blocking=True)
def column_metadata_matches_tables(bms: BmsPipelineResource) -> dg.AssetCheckResult:
    """The published column_metadata describes every column of every published table
    exactly, with IDC's schemas."""
    from bms_pipeline.core.clinical.tables import (
        column_metadata_matches_schema,
        read_written_tables,
    )

    bms.fetch(bms.layout.tables_dir)
    written = read_written_tables(bms.layout, bms.collection().collection_id)
    problems = column_metadata_matches_schema(written)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems)},
        description="; ".join(problems[:5]) or "column_metadata matches",
    )
