"""The `<collection_id>_laboratory` table from lab_values.xlsx: per lab column the source
string, its FLOAT value and its qualifier (parsing rules in `lab`).
"""

from __future__ import annotations

import polars as pl

from bms_pipeline.core.clinical.idc_metadata import (
    CASE_COLUMN,
    DICOM_PATIENT_COLUMN,
    SOURCE_BATCH,
    SOURCE_BATCH_COLUMN,
    ColumnInfo,
    SourceFile,
    provenance_columns,
)
from bms_pipeline.core.clinical.lab_cells import (
    HEMOGLOBIN_UNIT,
    LAB_SHEET,
    LabSheet,
)


def laboratory_table(
    lab: LabSheet, source: SourceFile
) -> tuple[pl.DataFrame, dict[str, ColumnInfo]]:
    """The laboratory table: IDC's provenance columns, then the source columns in source
    order: the patient column (case_col) and string/_value/_qualifier per lab column."""
    sheet = LAB_SHEET
    info = provenance_columns(lab.patient_header)
    info[CASE_COLUMN] = ColumnInfo(
        f"patient id as given in sheet {LAB_SHEET!r} (the DICOM PatientID)",
        (lab.patient_header,),
        (lab.patient_position,),
        source,
        sheet,
    )
    positioned: list[tuple[int, list[str]]] = [(lab.patient_position, [CASE_COLUMN])]
    notes = {n.column: n.describe() for n in lab.normalisations}
    for c in lab.columns:
        unit = f" in {HEMOGLOBIN_UNIT}" if c.is_hemoglobin else ""
        where = ((c.header,), (c.position,), source, sheet)
        info[c.name] = ColumnInfo(c.label, *where)
        info[f"{c.name}_value"] = ColumnInfo(
            f"{c.label} [numeric value{unit}]",
            *where,
            notes=(notes[f"{c.name}_value"],) if f"{c.name}_value" in notes else (),
        )
        info[f"{c.name}_qualifier"] = ColumnInfo(
            f"{c.label} [censoring qualifier]",
            *where,
            value_descriptions={
                "<": f"below {c.name}_value; below the detection limit where that is null",
                ">": f"above {c.name}_value",
            },
            values_note="descriptions defined by bms_pipeline",
            notes=("'<' with a null value marks '<Nachweisgrenze' (below the detection limit)",),
        )
        positioned.append((c.position, [c.name, f"{c.name}_value", f"{c.name}_qualifier"]))
    order = [DICOM_PATIENT_COLUMN, SOURCE_BATCH_COLUMN]
    order += [name for _, names in sorted(positioned) for name in names]
    table = lab.table.with_columns(pl.lit(SOURCE_BATCH, dtype=pl.Int64).alias(SOURCE_BATCH_COLUMN))
    return table.select(order), info
