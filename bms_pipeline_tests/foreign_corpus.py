"""A data root holding the foreign MIRAX slides (../shared/corpus/mirax/), with clinical rows,
lab values and annotation boxes written here (the corpus brings none): boxes inside each
slide's OpenSlide bounds, one patient per slide."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.mirax.inventory import openslide_properties
from bms_pipeline.core.slide_id import patient_id_of
from bms_pipeline.core.synthetic.tables import (
    SlideAnnotationSource,
    make_patients,
    write_annotation_csvs,
    write_clinical_csv,
    write_lab_values_xlsx,
)
from bms_pipeline_tests.thumbnail_scores import copy_corpus_slide, corpus_slide_ids


def bounds_of(mrxs: Path) -> tuple[int, int, int, int]:
    props = openslide_properties(mrxs)
    return tuple(  # type: ignore[return-value]
        int(props.get(f"openslide.bounds-{k}", default))
        for k, default in (
            ("x", 0),
            ("y", 0),
            ("width", props["openslide.level[0].width"]),
            ("height", props["openslide.level[0].height"]),
        )
    )


def annotation_source(slide_id: str, mrxs: Path, rng: np.random.Generator) -> SlideAnnotationSource:
    """Four fields tiling the bounds (inset), 40 cells and their nuclei inside them."""
    x, y, width, height = bounds_of(mrxs)
    half_w, half_h = width // 2, height // 2
    fields = [
        (x + i * half_w + 8, y + j * half_h + 8, half_w - 16, half_h - 16)
        for j in range(2)
        for i in range(2)
    ]
    cells, nuclei = [], []
    for k in range(40):
        fx, fy, fw, fh = fields[k % 4]
        size = float(rng.uniform(20, 60))
        cx = float(rng.uniform(fx, fx + fw - size))
        cy = float(rng.uniform(fy, fy + fh - size))
        cells.append((cx, cy, cx + size, cy + size))
        nuclei.append((cx + size / 4, cy + size / 4, cx + 3 * size / 4, cy + 3 * size / 4))
    return SlideAnnotationSource(
        slide_id=slide_id,
        field_rects=fields,
        cell_boxes=np.array(cells),
        cell_lineage=rng.integers(0, 3, len(cells)),
        nucleus_boxes=np.array(nuclei),
    )


def write_foreign_root(
    root: Path, slide_ids: list[str] | None = None, collection_yaml: str = DEFAULT_COLLECTION_YAML
) -> DataLayout:
    """`root` with raw/ holding the corpus slides (copies), clinical.csv, lab_values.xlsx and
    the annotation CSVs; the raw files an hour old (settled, for the sensor)."""
    slide_ids = slide_ids if slide_ids is not None else corpus_slide_ids()
    layout = DataLayout.at(root)
    rng = np.random.default_rng(25)
    mrxs = {s: copy_corpus_slide(s, layout.slides_dir) for s in slide_ids}
    patients = [
        replace(p, patient_id=patient_id_of(s))
        for p, s in zip(make_patients(rng, len(slide_ids)), slide_ids, strict=True)
    ]
    layout.clinical_csv.parent.mkdir(parents=True, exist_ok=True)
    write_clinical_csv(layout.clinical_csv, patients, rng)
    write_lab_values_xlsx(layout.clinical_csv.parent / "lab_values.xlsx", patients, rng)
    write_annotation_csvs(
        layout.raw / "annotations", [annotation_source(s, mrxs[s], rng) for s in slide_ids], rng
    )
    layout.collection_yaml.write_text(collection_yaml, encoding="utf-8")
    past = time.time() - 3600
    for path in layout.raw.rglob("*"):
        os.utime(path, (past, past))
    return layout
