"""Synthetic clinical, lab and annotation tables in the real BMDeep source layout.

The MIRAX writer makes the pixels; this module writes everything else below ``raw/clinical``
and ``raw/annotations`` (DESIGN.md sections 2 and 7). The files are messy the way the real
ones are (BOM, semicolons, German decimal commas, censored lab values, renamed and German
cell labels, split expert votes), so the readers get tested against those cases rather
than against tidy data. Every function draws only from the `numpy.random.Generator` it is
given, and writes no timestamps, so one seed always gives byte-identical files.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import xlsxwriter  # pyright: ignore[reportMissingTypeStubs]

from bms_pipeline.core.annotations.consensus import (
    apply_rename,
    consensus_label,
    source_names,
)
from bms_pipeline.core.clinical.patients import CLINICAL_COLUMNS, ncit_leukemia
from bms_pipeline.core.reference import reference_path

# --------------------------------------------------------------------------- patients

NCIT_LEUKEMIA: dict[str, str] = ncit_leukemia()
"""The small NCIt table the project ships (reference/ncit_leukemia.csv): code -> name."""

GENDERS = ("female", "male", "other")
_GENDER_P = (0.47, 0.47, 0.06)

# (leukemia_type, leukemia_subtype, NCIt code, weight); B-ALL dominates as in childhood leukemia.
_DIAGNOSES: tuple[tuple[str, str | None, str, float], ...] = (
    ("ALL", "B-ALL", "C8644", 0.45),
    ("ALL", None, "C3167", 0.17),
    ("AML", None, "C3171", 0.18),
    ("CML", "BCR-ABL1 positive", "C3174", 0.08),
)
_NO_DIAGNOSIS_WEIGHT = 0.12


@dataclass(frozen=True)
class SyntheticPatient:
    """One pseudonymised pediatric patient, as clinical.csv describes them."""

    patient_id: str  # 32-char upper-case hex pseudonym
    gender: str  # "female" | "male" | "other"
    age_years: int  # 1..18
    leukemia_type: str | None  # None for a patient without a detailed diagnosis
    leukemia_subtype: str | None
    ncit_code: str | None  # a key of NCIT_LEUKEMIA
    ncit_meaning: str | None


def make_patients(rng: np.random.Generator, n: int) -> list[SyntheticPatient]:
    """Draw ``n`` patients with unique pseudonyms.

    With ``n >= 3`` at least one patient has no diagnosis, because the real collection has
    such patients and the DICOM metadata must then carry no diagnosis attributes at all.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = np.array([d[3] for d in _DIAGNOSES] + [_NO_DIAGNOSIS_WEIGHT])
    weights /= weights.sum()
    seen: set[str] = set()
    patients: list[SyntheticPatient] = []
    for _ in range(n):
        patient_id = rng.bytes(16).hex().upper()
        while patient_id in seen:
            patient_id = rng.bytes(16).hex().upper()
        seen.add(patient_id)
        gender = GENDERS[int(rng.choice(len(GENDERS), p=_GENDER_P))]
        age = int(rng.integers(1, 19))
        k = int(rng.choice(len(weights), p=weights))
        if k < len(_DIAGNOSES):
            ltype, subtype, code, _ = _DIAGNOSES[k]
            patients.append(
                SyntheticPatient(patient_id, gender, age, ltype, subtype, code, NCIT_LEUKEMIA[code])
            )
        else:
            patients.append(SyntheticPatient(patient_id, gender, age, None, None, None, None))
    if n >= 3 and all(p.ncit_code is not None for p in patients):
        i = int(rng.integers(n))
        patients[i] = replace(
            patients[i],
            leukemia_type=None,
            leukemia_subtype=None,
            ncit_code=None,
            ncit_meaning=None,
        )
    return patients


# --------------------------------------------------------------------------- clinical.csv


def write_clinical_csv(
    path: Path, patients: Sequence[SyntheticPatient], rng: np.random.Generator
) -> None:
    """Write clinical.csv as the source delivers it: ``;``-delimited, UTF-8 with BOM, CRLF.

    Ages are written either as plain years (``7``) or as a DICOM Age String (``012Y``);
    with two or more patients both forms occur, so the reader must handle both.
    """
    n = len(patients)
    as_dicom_age = rng.random(n) < 0.5
    if n >= 2:
        plain, dicom = rng.permutation(n)[:2]
        as_dicom_age[plain] = False
        as_dicom_age[dicom] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh, delimiter=";", lineterminator="\r\n")
        writer.writerow(CLINICAL_COLUMNS)
        for patient, dicom_age in zip(patients, as_dicom_age, strict=True):
            age = f"{patient.age_years:03d}Y" if dicom_age else str(patient.age_years)
            writer.writerow(
                [
                    patient.patient_id,
                    patient.gender,
                    age,
                    patient.leukemia_type or "",
                    patient.leukemia_subtype or "",
                    patient.ncit_code or "",
                ]
            )


# --------------------------------------------------------------------------- lab_values.xlsx

LAB_SHEET = "lab_values"
DICTIONARY_SHEET = "idc_dictionary"
NOT_DETECTABLE = "<Nachweisgrenze"
"""German "below the detection limit": a censored value without a number."""

_XLSX_CREATED = datetime(2025, 1, 1, tzinfo=UTC)  # fixed, so the bytes repeat
_BLANK_P = 0.06
_NOT_DETECTABLE_P = 0.3  # share of below-limit values written as text, not "<limit"


@dataclass(frozen=True)
class _Censor:
    limit: float
    text: str  # as the lab writes it, e.g. ">1800", "<0,2"


@dataclass(frozen=True)
class _LabSpec:
    decimals: int
    lower: _Censor | None = None
    upper: _Censor | None = None


# Units as a German pediatric lab reports them; ranges are drawn in `_draw_lab_values`.
_LAB_SPECS: dict[str, _LabSpec] = {
    "lactate_dehydrogenase": _LabSpec(0, upper=_Censor(1800, ">1800")),  # U/L
    "alanine_aminotransferase": _LabSpec(0, lower=_Censor(5, "<5")),  # U/L
    "hematocrit": _LabSpec(1),  # %
    "creatinine": _LabSpec(2, lower=_Censor(0.2, "<0,2")),  # mg/dL
    "erythrocyte_mean_corpuscular_hemoglobin": _LabSpec(1),  # pg
    "erythrocyte_mean_corpuscular_hemoglobin_concentration": _LabSpec(1),  # g/dL
    "aspartate_aminotransferase": _LabSpec(0),  # U/L
    "erythrocyte_distribution_width": _LabSpec(1),  # %
    "erythrocyte_mean_corpuscular_volume": _LabSpec(1),  # fL
    "urate": _LabSpec(1, lower=_Censor(1.5, "<1,5")),  # mg/dL
    "leukocytes": _LabSpec(1),  # 10^3/µL
    "eosinophils_over_100_leukocytes": _LabSpec(0),  # %
    "hemoglobin": _LabSpec(1),  # g/dL or g/L, see `_write_lab_row`
    "lymphocytes_over_100_leukocytes": _LabSpec(0),  # %
    "monocytes_over_100_leukocytes": _LabSpec(0),  # %
    "neutrophils_segmented_over_100_leukocytes": _LabSpec(0),  # %
    "platelets": _LabSpec(0),  # 10^3/µL
    "erythrocytes": _LabSpec(2),  # 10^6/µL
}


@cache
def _lab_reference() -> tuple[dict[str, str], ...]:
    with reference_path("loinc_lab_columns.csv").open(encoding="utf-8", newline="") as fh:
        return tuple(csv.DictReader(fh))


def _german(value: float, decimals: int) -> str:
    """Format with a decimal comma, as the German lab system exports numbers."""
    return f"{value:.{decimals}f}".replace(".", ",")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _draw_lab_values(rng: np.random.Generator) -> dict[str, float]:
    """One patient's true values, with the red-cell indices kept mutually consistent."""
    hb = rng.uniform(4.0, 14.0)  # g/dL; often anaemic at diagnosis
    mcv = rng.uniform(72.0, 98.0)
    hct = max(3.0 * hb + rng.normal(0.0, 1.0), 8.0)
    rbc = hct * 10.0 / mcv
    diff = rng.dirichlet([6.0, 4.0, 0.8, 0.4, 1.5]) * 100.0  # lymph, neut, mono, eos, blasts
    return {
        "lactate_dehydrogenase": _log_uniform(rng, 150.0, 4000.0),
        "alanine_aminotransferase": _log_uniform(rng, 3.0, 300.0),
        "hematocrit": hct,
        "creatinine": rng.uniform(0.1, 0.9),
        "erythrocyte_mean_corpuscular_hemoglobin": hb * 10.0 / rbc,
        "erythrocyte_mean_corpuscular_hemoglobin_concentration": hb * 100.0 / hct,
        "aspartate_aminotransferase": _log_uniform(rng, 10.0, 400.0),
        "erythrocyte_distribution_width": rng.uniform(11.5, 22.0),
        "erythrocyte_mean_corpuscular_volume": mcv,
        "urate": _log_uniform(rng, 1.0, 12.0),
        "leukocytes": _log_uniform(rng, 0.5, 350.0),
        "eosinophils_over_100_leukocytes": diff[3],
        "hemoglobin": hb,
        "lymphocytes_over_100_leukocytes": diff[0],
        "monocytes_over_100_leukocytes": diff[2],
        "neutrophils_segmented_over_100_leukocytes": diff[1],
        "platelets": _log_uniform(rng, 5.0, 600.0),
        "erythrocytes": rbc,
    }


def _format_lab_value(rng: np.random.Generator, column: str, value: float) -> str:
    spec = _LAB_SPECS[column]
    if spec.upper is not None and value > spec.upper.limit:
        return spec.upper.text
    if spec.lower is not None and value < spec.lower.limit:
        return NOT_DETECTABLE if rng.random() < _NOT_DETECTABLE_P else spec.lower.text
    return _german(value, spec.decimals)


def write_lab_values_xlsx(
    path: Path, patients: Sequence[SyntheticPatient], rng: np.random.Generator
) -> None:
    """Write lab_values.xlsx with every cell stored as text, as the source workbook has it.

    Sheet ``lab_values`` holds ``patient_id`` plus the 18 LOINC columns in reference order;
    sheet ``idc_dictionary`` labels each column with its LOINC code. Values are censored
    (``>1800``, ``<0,2``, ``<Nachweisgrenze``), use decimal commas, have blanks, and
    hemoglobin is in g/dL (``10,2``) for some rows and g/L (``102``) for others. With three
    or more patients every one of these kinds occurs, so each reader rule is exercised.
    """
    reference = _lab_reference()
    columns = [row["column"] for row in reference]
    if set(columns) != set(_LAB_SPECS):
        raise RuntimeError("loinc_lab_columns.csv and _LAB_SPECS disagree")
    n = len(patients)
    hb_in_g_per_l = rng.random(n) < 0.5
    # Every messy kind is forced onto rows chosen by the rng; random blanks spare them.
    forced: dict[tuple[int, str], str | None] = {}
    kept: set[tuple[int, str]] = set()
    if n:
        order = rng.permutation(n)
        first, second, third = (int(order[k % n]) for k in range(3))
        hb_in_g_per_l[first], hb_in_g_per_l[second] = False, True
        forced[(first, "lactate_dehydrogenase")] = ">1800"
        forced[(second, "creatinine")] = "<0,2"
        forced[(third, "urate")] = NOT_DETECTABLE
        censored = {"lactate_dehydrogenase", "creatinine", "urate", "hemoglobin"}
        blankable = [c for c in columns if c not in censored]
        forced[(first, blankable[int(rng.integers(len(blankable)))])] = None
        kept = {(first, "hemoglobin"), (second, "hemoglobin")}
    rows: list[list[str | None]] = []
    for i, patient in enumerate(patients):
        values = _draw_lab_values(rng)
        row: list[str | None] = [patient.patient_id]
        for column in columns:
            text: str | None = _format_lab_value(rng, column, values[column])
            if column == "hemoglobin" and hb_in_g_per_l[i]:
                text = str(round(values[column] * 10.0))
            blank = rng.random() < _BLANK_P
            if (i, column) in forced:
                text = forced[(i, column)]
            elif blank and (i, column) not in kept:
                text = None
            row.append(text)
        rows.append(row)
    dictionary = [
        [
            row["column"],
            (
                f"LOINC:{row['loinc']} COMPONENT: {row['component']} "
                f"DISPLAY_NAME: {row['display_name']}"
            ),
        ]
        for row in reference
    ]
    _write_text_xlsx(
        path,
        {
            LAB_SHEET: (["patient_id", *columns], rows),
            DICTIONARY_SHEET: (["column_formula", "column_label_formula"], dictionary),
        },
    )


def _write_text_xlsx(
    path: Path, sheets: Mapping[str, tuple[Sequence[str], Sequence[Sequence[str | None]]]]
) -> None:
    """Write sheets of string cells (None = blank) with a fixed creation time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # in_memory: xlsxwriter then stamps every zip member 1980-01-01, so the bytes repeat.
    with xlsxwriter.Workbook(str(path), {"in_memory": True}) as workbook:
        # xlsxwriter leaves some parameters unannotated (strict mode calls them Unknown).
        workbook.set_properties({"created": _XLSX_CREATED})  # pyright: ignore[reportUnknownMemberType]
        for name, (header, body) in sheets.items():
            sheet = workbook.add_worksheet(name)  # pyright: ignore[reportUnknownMemberType]
            for c, value in enumerate(header):
                sheet.write_string(0, c, value)
            for r, row in enumerate(body, start=1):
                for c, value in enumerate(row):
                    if value:
                        sheet.write_string(r, c, value)


# --------------------------------------------------------------------------- cell labels

LINEAGES = ("lymphoid", "myeloid", "erythroid")
"""Index -> name of `SlideAnnotationSource.cell_lineage` values."""

# Canonical labels (cell_labels.csv) an expert gives a cell of each lineage, with weights.
LINEAGE_LABELS: tuple[dict[str, float], ...] = (
    {
        "lymphocyte": 0.33,
        "lymphoid_precursor_cell": 0.35,
        "prolymphocyte": 0.08,
        "lymphocytic_blast": 0.06,
        "lymphoidocyte": 0.08,
        "plasma_cell": 0.10,
    },
    {
        "myeloid_precursor_cell": 0.20,
        "myelocytic_blast": 0.02,
        "promyelocyte": 0.12,
        "neutrophilic_myelocyte": 0.12,
        "degranulated_neutrophilic_myelocyte": 0.02,
        "neutrophilic_metamyelocyte": 0.10,
        "neutrophilic_band": 0.10,
        "segmented_neutrophil": 0.14,
        "eosinophilic_myelocyte": 0.03,
        "segmented_eosinophil": 0.04,
        "segmented_basophil": 0.01,
        "monocyte": 0.05,
        "promonocyte": 0.02,
        "monocytic_blast": 0.03,
    },
    {
        "proerythroblast": 0.15,
        "basophilic_erythroblast": 0.20,
        "polychromatic_erythroblast": 0.40,
        "orthochromatic_erythroblast": 0.25,
    },
)
# Labels any cell can get (a damaged or unclear cell), drawn for a few annotations.
ANY_LINEAGE_LABELS: dict[str, float] = {
    "smudge_cell": 0.30,
    "damaged_cell": 0.25,
    "technically_unfit": 0.20,
    "unknown_blast": 0.15,
    "giant_platelet": 0.10,
}
_SESSION_COUNT_P = (0.2, 0.3, 0.3, 0.2)  # 1, 2, 3 or 4 expert sessions per cell
_AGREE_P = 0.70  # an expert gives the cell's "true" label
_ANY_LINEAGE_P = 0.05
_SOURCE_NAME_P = 0.30  # a label is written under its old or German source name
# Per lineage, (source name, canonical label) pairs that the forced scenarios use.
_OLD_NAME = (
    ("lymphoblast", "lymphoid_precursor_cell"),
    ("myeloblast", "myeloid_precursor_cell"),
    ("lymphoblast", "lymphoid_precursor_cell"),  # early erythroblasts pass for blasts
)
_GERMAN_OTHER = (
    ("other:Kernreste", "damaged_cell"),
    ("other:degranulierter Promyelozyt", "degranulated_neutrophilic_myelocyte"),
    ("other:basophiler Erythroblast", "basophilic_erythroblast"),
)


def _weighted(rng: np.random.Generator, table: Mapping[str, float]) -> str:
    labels = list(table)
    p = np.array(list(table.values()), dtype=np.float64)
    return labels[int(rng.choice(len(labels), p=p / p.sum()))]


def _maybe_source_name(rng: np.random.Generator, label: str) -> str:
    names = source_names().get(label)
    if names and rng.random() < _SOURCE_NAME_P:
        return names[int(rng.integers(len(names)))]
    return label


def _draw_annotations(rng: np.random.Generator, lineage: int) -> list[str]:
    """One cell's labels over 1-4 sessions: mostly agreeing, sometimes not."""
    sessions = int(rng.choice(len(_SESSION_COUNT_P), p=_SESSION_COUNT_P)) + 1
    pool = LINEAGE_LABELS[lineage]
    truth = _weighted(rng, pool)
    labels: list[str] = []
    for _ in range(sessions):
        u = rng.random()
        if u < _ANY_LINEAGE_P:
            label = _weighted(rng, ANY_LINEAGE_LABELS)
        elif u < _AGREE_P:
            label = truth
        else:
            label = _weighted(rng, pool)
        labels.append(_maybe_source_name(rng, label))
    return labels


def _scenario(rng: np.random.Generator, kind: str, lineage: int) -> list[str]:
    """Labels for a case the consensus rule must see at least once."""
    pool = list(LINEAGE_LABELS[lineage])
    a, b, c = (str(x) for x in rng.choice(pool, size=3, replace=False))
    if kind == "single":  # one expert only -> no consensus
        return [a]
    if kind == "tie":  # 1:1 split -> tie-break
        return [a, b]
    if kind == "no_majority":  # 1:1:1 split -> no consensus
        return [a, b, c]
    source, canonical = (_OLD_NAME if kind == "old_name" else _GERMAN_OTHER)[lineage]
    other = next(x for x in (a, b, c) if x != canonical)
    # Only after the rename do the two votes agree and win.
    return [str(x) for x in rng.permutation([source, canonical, other])]


_SCENARIOS = ("single", "tie", "no_majority", "old_name", "german_other")


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class SlideAnnotationSource:
    """What the slide generator knows about one slide, in MRXS level-0 canvas pixels."""

    slide_id: str
    field_rects: Sequence[tuple[int, int, int, int]]  # scanned camera fields (x, y, w, h)
    cell_boxes: np.ndarray  # (n, 4) float x1, y1, x2, y2, each inside one scanned field
    cell_lineage: np.ndarray  # (n,) int index into LINEAGES
    nucleus_boxes: np.ndarray  # (m, 4) float x1, y1, x2, y2
    expert_labels: bool = True
    """False: a slide whose cells no expert labelled (97 of IDC's 246 slides): empty
    all_original_annotations and original_consensus_label."""


@dataclass(frozen=True)
class AnnotationTruth:
    """The rows written to rois.csv, cells.csv and detections.csv, typed as polars reads them."""

    rois: pl.DataFrame
    cells: pl.DataFrame
    detections: pl.DataFrame


ROIS_SCHEMA = {
    "roi_id": pl.Int64,
    "slide_id": pl.String,
    "x1": pl.Int64,
    "y1": pl.Int64,
    "x2": pl.Int64,
    "y2": pl.Int64,
}
CELLS_SCHEMA = {
    "cell_id": pl.Int64,
    "slide_id": pl.String,
    "roi_id": pl.Int64,
    "x1": pl.Int64,
    "y1": pl.Int64,
    "x2": pl.Int64,
    "y2": pl.Int64,
    "original_consensus_label": pl.String,
    "all_original_annotations": pl.String,
}
DETECTIONS_SCHEMA = {
    "slide_id": pl.String,
    "x1": pl.Float64,
    "y1": pl.Float64,
    "x2": pl.Float64,
    "y2": pl.Float64,
    "score": pl.Float64,
}
_ROI_FRACTION = (0.35, 0.75)  # ROI side as a fraction of its field's side
_ROI_ATTEMPTS = 20

Box = tuple[int, int, int, int]


def _validated(slide: SlideAnnotationSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fields (k, 4) x1y1x2y2, outward-rounded cell boxes, and each cell's first field."""
    fields = np.array(
        [(x, y, x + w, y + h) for x, y, w, h in slide.field_rects], dtype=np.int64
    ).reshape(-1, 4)
    if len(fields) == 0 or np.any(fields[:, 2:] <= fields[:, :2]):
        raise ValueError(f"{slide.slide_id}: needs scanned fields of positive size")
    cells = np.asarray(slide.cell_boxes, dtype=np.float64).reshape(-1, 4)
    lineage = np.asarray(slide.cell_lineage).reshape(-1)
    if len(lineage) != len(cells) or np.any((lineage < 0) | (lineage >= len(LINEAGES))):
        raise ValueError(f"{slide.slide_id}: cell_lineage must be one value in 0..2 per cell")
    inside = (
        (cells[:, None, 0] >= fields[None, :, 0])
        & (cells[:, None, 1] >= fields[None, :, 1])
        & (cells[:, None, 2] <= fields[None, :, 2])
        & (cells[:, None, 3] <= fields[None, :, 3])
    )
    outside = np.flatnonzero(~inside.any(axis=1))
    if len(outside):
        raise ValueError(
            f"{slide.slide_id}: cell boxes {outside[:5].tolist()} lie in no scanned field"
        )
    rounded = np.concatenate([np.floor(cells[:, :2]), np.ceil(cells[:, 2:])], axis=1)
    return fields, rounded.astype(np.int64), inside.argmax(axis=1)


def _roi_of(
    cells: np.ndarray, rois: Sequence[Box], roi_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Per cell, the id of the ROI that fully contains its box (ROIs never overlap), or -1."""
    out = np.full(len(cells), -1, dtype=np.int64)
    for k, (x1, y1, x2, y2) in enumerate(rois):
        inside = (cells[:, 0] >= x1) & (cells[:, 1] >= y1) & (cells[:, 2] <= x2)
        out[inside & (cells[:, 3] <= y2)] = k if roi_ids is None else roi_ids[k]
    return out


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_roi(
    rng: np.random.Generator,
    fields: np.ndarray,
    cells: np.ndarray,
    field_of: np.ndarray,
    rois: Sequence[Box],
) -> Box:
    """An ROI inside one field, around a cell not yet in an ROI where there is one."""
    free = np.flatnonzero(_roi_of(cells, rois) < 0)
    anchor = int(free[rng.integers(len(free))]) if len(free) else None
    field = field_of[anchor] if anchor is not None else rng.integers(len(fields))
    fx1, fy1, fx2, fy2 = (int(v) for v in fields[field])
    w = max(round((fx2 - fx1) * rng.uniform(*_ROI_FRACTION)), 1)
    h = max(round((fy2 - fy1) * rng.uniform(*_ROI_FRACTION)), 1)
    if anchor is None:
        x_range, y_range = (fx1, fx2 - w), (fy1, fy2 - h)
    else:
        bx1, by1, bx2, by2 = (int(v) for v in cells[anchor])
        w, h = max(w, bx2 - bx1), max(h, by2 - by1)
        x_range = (max(fx1, bx2 - w), min(bx1, fx2 - w))
        y_range = (max(fy1, by2 - h), min(by1, fy2 - h))
    x1 = int(rng.integers(x_range[0], x_range[1] + 1))
    y1 = int(rng.integers(y_range[0], y_range[1] + 1))
    return (x1, y1, x1 + w, y1 + h)


def _place_rois(
    rng: np.random.Generator, fields: np.ndarray, cells: np.ndarray, field_of: np.ndarray
) -> list[Box]:
    """1-3 non-overlapping ROIs, each inside one scanned field.

    ROIs never overlap, so a cell lies fully inside at most one of them and its roi_id is
    unambiguous. A placement that would overlap is redrawn, and dropped after a few tries.
    """
    rois: list[Box] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(_ROI_ATTEMPTS):
            roi = _draw_roi(rng, fields, cells, field_of, rois)
            if not any(_overlaps(roi, other) for other in rois):
                rois.append(roi)
                break
    return rois


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # quotes fields holding a comma
        writer.writerow(header)
        writer.writerows(rows)


def write_annotation_csvs(
    folder: Path, slides: Sequence[SlideAnnotationSource], rng: np.random.Generator
) -> AnnotationTruth:
    """Write rois.csv, cells.csv and detections.csv for ``slides`` and return their rows.

    ROIs are 1-3 per slide, each inside a scanned field; roi_id and cell_id count from 1 over
    the whole file. Every input cell becomes one row with its box rounded outward to whole
    pixels and the id of the ROI containing it (or -1). Each cell gets 1-4 expert labels of its
    lineage, some under an old or German source name, and the consensus by
    `consensus_label`. With five or more cells, the file is guaranteed to hold a single
    annotation, a 1:1 tie, a 1:1:1 split, and majorities that only form after the rename of
    an old name and of a German ``other:`` label. Detections are the nucleus boxes with a
    detector score. Raises ValueError for a cell box outside every scanned field.
    """
    folder.mkdir(parents=True, exist_ok=True)
    roi_rows: list[tuple[object, ...]] = []
    cell_geometry: list[tuple[str, int, Box]] = []  # slide_id, roi_id, box
    lineages: list[int] = []
    labelled: list[bool] = []
    for slide in slides:
        fields, cells, field_of = _validated(slide)
        rois = _place_rois(rng, fields, cells, field_of)
        roi_ids = list(range(len(roi_rows) + 1, len(roi_rows) + 1 + len(rois)))
        roi_rows.extend((rid, slide.slide_id, *roi) for rid, roi in zip(roi_ids, rois, strict=True))
        for box, roi_id in zip(cells, _roi_of(cells, rois, roi_ids), strict=True):
            x0, y0, x1, y1 = (int(v) for v in box)
            cell_geometry.append((slide.slide_id, int(roi_id), (x0, y0, x1, y1)))
        lineage = [int(v) for v in np.asarray(slide.cell_lineage).reshape(-1)]
        lineages.extend(lineage)
        labelled.extend([slide.expert_labels] * len(lineage))

    annotations = [_draw_annotations(rng, lineage) for lineage in lineages]
    candidates = np.flatnonzero(labelled)
    for kind, i in zip(_SCENARIOS, rng.permutation(candidates), strict=False):
        annotations[int(i)] = _scenario(rng, kind, lineages[int(i)])
    consensus = [consensus_label(labels) for labels in annotations]
    # Real sources sometimes record another consensus than the rule gives (an expert broke
    # a tie): the first 1:1 tie records the vote the rule did not pick.
    for i in (int(i) for i in candidates):
        votes = {apply_rename(v) for v in annotations[i]}
        if len(annotations[i]) == 2 and len(votes) == 2:
            consensus[i] = min(votes - {consensus[i]})
            break
    for i, has_labels in enumerate(labelled):
        if not has_labels:
            annotations[i], consensus[i] = [], ""
    cell_rows = [
        (cell_id, slide_id, roi_id, *box, given, ",".join(labels))
        for cell_id, ((slide_id, roi_id, box), labels, given) in enumerate(
            zip(cell_geometry, annotations, consensus, strict=True), start=1
        )
    ]

    detection_rows: list[tuple[object, ...]] = []
    for slide in slides:
        nuclei = np.asarray(slide.nucleus_boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.clip(np.round(rng.beta(8.0, 2.0, size=len(nuclei)), 4), 1e-4, 1.0)
        for box, score in zip(nuclei, scores, strict=True):
            coords = (round(float(v), 2) for v in box)
            detection_rows.append((slide.slide_id, *coords, float(score)))

    truth = AnnotationTruth(
        rois=pl.DataFrame(roi_rows, schema=ROIS_SCHEMA, orient="row"),
        cells=pl.DataFrame(cell_rows, schema=CELLS_SCHEMA, orient="row"),
        detections=pl.DataFrame(detection_rows, schema=DETECTIONS_SCHEMA, orient="row"),
    )
    _write_csv(folder / "rois.csv", list(ROIS_SCHEMA), roi_rows)
    _write_csv(folder / "cells.csv", list(CELLS_SCHEMA), cell_rows)
    _write_csv(
        folder / "detections.csv",
        list(DETECTIONS_SCHEMA),
        [(s, *(f"{v:.2f}" for v in box), f"{score:.4f}") for s, *box, score in detection_rows],
    )
    return truth
