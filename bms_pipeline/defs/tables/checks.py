"""The clinical tables agree with the DICOM and carry no free text that could identify
anyone; evaluated in one step."""

import dagster as dg

from bms_pipeline.defs.check_steps import Check, checks_in_one_step
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.tables.assets import clinical_tables, dicom_index


def _published(bms: BmsPipelineResource, table: str):  # -> pl.DataFrame
    import polars as pl

    path = bms.layout.table_parquet(table)
    with bms.files(require=[path]):
        return pl.read_parquet(path)


def _dicom_patients(bms: BmsPipelineResource) -> set[str]:

    return set(_published(bms, "index")["PatientID"].to_list())


def _left_out(context: dg.AssetCheckExecutionContext) -> dict[str, list[str]]:
    """What the last clinical_tables materialization left out (its metadata)."""
    records = context.instance.fetch_materializations(clinical_tables.key, limit=1).records
    if not records or records[0].asset_materialization is None:
        return {}
    value = records[0].asset_materialization.metadata.get("patients_left_out")
    return dict(value.value) if value is not None else {}  # type: ignore[arg-type]


def clinical_patients_match_dicom(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """Every dicom_patient_id of the clinical and the laboratory table is a PatientID in the
    converted DICOM (error); a converted patient without a clinical row is reported (warning).
    Rows of patients without a converted slide were left out when the tables were built, and
    are listed here by patient id."""
    from bms_pipeline.core.clinical.qa import patient_coverage

    collection = bms.collection()
    clinical = f"{collection.collection_id}_clinical"
    laboratory = f"{collection.collection_id}_laboratory"
    coverage = patient_coverage(
        {table: _published(bms, table) for table in (clinical, laboratory)},
        clinical,
        _dicom_patients(bms),
        _left_out(context),
        collection.keep_patients_without_dicom,
    )
    return dg.AssetCheckResult(
        passed=coverage.passed,
        severity=dg.AssetCheckSeverity.ERROR if coverage.is_error else dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_without_dicom": dg.MetadataValue.json(coverage.rows_without_dicom),
            "dicom_patients_without_clinical_row": dg.MetadataValue.json(
                coverage.dicom_without_clinical
            ),
            "patients_left_out": dg.MetadataValue.json(coverage.left_out),
        },
        description=coverage.describe(),
    )


def clinical_tables_have_no_duplicates_or_free_text(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """One row per patient in every table, and no name, date or free-text column."""
    import polars as pl

    from bms_pipeline.core.clinical.qa import duplicate_patients, free_text_phi_columns

    layout = bms.layout
    collection_id = bms.collection().collection_id
    problems: list[str] = []
    with bms.files(read=[layout.tables_dir]):
        for table in (f"{collection_id}_clinical", f"{collection_id}_laboratory"):
            frame = pl.read_parquet(layout.table_parquet(table))
            problems += [f"{table}: duplicate patient {p}" for p in duplicate_patients(frame)]
            problems += [
                f"{table}: possible free-text PHI column {c}" for c in free_text_phi_columns(frame)
            ]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems)},
        description="; ".join(problems[:5]) or "no duplicates, no free text",
    )


def column_metadata_matches_tables(
    context: dg.AssetCheckExecutionContext, bms: BmsPipelineResource
) -> dg.AssetCheckResult:
    """The published column_metadata describes every column of every published table
    exactly, with IDC's schemas."""
    from bms_pipeline.core.clinical.qa import column_metadata_matches_schema
    from bms_pipeline.core.clinical.tables import read_written_tables

    with bms.files(read=[bms.layout.tables_dir]):
        written = read_written_tables(bms.layout, bms.collection().collection_id)
    problems = column_metadata_matches_schema(written)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems)},
        description="; ".join(problems[:5]) or "column_metadata matches",
    )


CLINICAL_TABLES_CHECKS = (
    Check(clinical_patients_match_dicom, additional_deps=(dicom_index,)),
    Check(clinical_tables_have_no_duplicates_or_free_text),
    Check(column_metadata_matches_tables),
)


clinical_tables_checks = checks_in_one_step(clinical_tables, CLINICAL_TABLES_CHECKS)
