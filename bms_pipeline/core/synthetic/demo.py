"""The embedded demo dataset: BMDeep's input contract with synthetic slides and tables.

One generator makes the demo data and every test fixture, so what the tests prove is
what the demo runs. Output is a pure function of (slides, seed, size).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.synthetic.banked import (
    Bank,
    BankedSlide,
    NotEnoughDiskError,
    estimated_bytes,
    write_banked_mirax,
)
from bms_pipeline.core.synthetic.mirax_writer import (
    MiraxGeometry,
    MiraxGroundTruth,
    MiraxSlideSpec,
    PreviewExtent,
    write_mirax,
)
from bms_pipeline.core.synthetic.smear_content import SmearCells, scatter_cells
from bms_pipeline.core.synthetic.tables import (
    SlideAnnotationSource,
    SyntheticPatient,
    make_patients,
    write_annotation_csvs,
    write_clinical_csv,
    write_lab_values_xlsx,
)

logger = logging.getLogger(__name__)

Size = Literal["small", "large", "wide", "full"]

WIDE_SIZE = (190_528, 14_376)
"""`wide`: as wide as the real BMDeep slides (up to about 190,000 x 450,000 px) and a strip
of theirs high, so that memory and speed at the real width can be measured in minutes."""

FULL_SIZE = (190_528, 448_768)
"""`full`: the largest BMDeep slides (about 189,184 x 448,768 px, 13.8 GB of DICOM), written
from a bank of camera images (`banked`) so that it takes minutes; with `--width/--height`,
any size so written."""

_LARGE_FIELD = (512, 384, 2, 16, 12)  # image w, h, divisions, overlap x, y of large slides


@dataclass(frozen=True)
class DemoDataset:
    layout: DataLayout
    patients: tuple[SyntheticPatient, ...]
    slides: dict[str, MiraxGroundTruth | BankedGroundTruth]


@dataclass(frozen=True)
class BankedGroundTruth:
    """A `full` slide: its spec and the bank every stored image comes from (`BankedSlide`
    gives the pixels of any level-0 image or region)."""

    spec: MiraxSlideSpec
    slide: BankedSlide
    mrxs_path: Path

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        return self.spec.geometry.bounds


def _missing_fields(
    rng: np.random.Generator, fields_x: int, fields_y: int
) -> frozenset[tuple[int, int]]:
    """First column and row unscanned (non-zero bounds) plus a few interior holes (sparse scan)."""
    missing = {(0, y) for y in range(fields_y)} | {(x, 0) for x in range(fields_x)}
    interior = [(x, y) for x in range(2, fields_x - 1) for y in range(2, fields_y - 1)]
    holes = max(1, len(interior) // 40)
    for i in rng.choice(len(interior), size=min(holes, len(interior)), replace=False):
        missing.add(interior[int(i)])
    return frozenset(missing)


def fields_for(width: int, height: int) -> tuple[int, int]:
    """Camera fields of a large-style slide whose bounds (after the unscanned first column
    and row) are at least `width` x `height` px: each field adds its size minus the overlap."""
    image_w, image_h, divisions, overlap_x, overlap_y = _LARGE_FIELD
    advance_x, advance_y = divisions * image_w - overlap_x, divisions * image_h - overlap_y
    fields_x = 1 + max(1, -(-(width - overlap_x) // advance_x))
    fields_y = 1 + max(1, -(-(height - overlap_y) // advance_y))
    return fields_x, fields_y


def slide_geometry(
    rng: np.random.Generator,
    size: Size,
    index: int,
    dimensions: tuple[int, int] | None = None,
) -> MiraxGeometry:
    """The camera grid of demo slide `index`; `dimensions` (bounds width, height in px)
    gives a large-style slide of that size, whatever `size` says."""
    if size == "full" and dimensions is None:
        dimensions = FULL_SIZE
    if dimensions is not None or size in ("large", "wide"):
        # large: >= 30,000 px each way after the unscanned first row and column are cropped.
        fields_x, fields_y = (
            fields_for(*dimensions)
            if dimensions is not None
            else fields_for(*WIDE_SIZE)
            if size == "wide"
            else (31, 41)
        )
        return MiraxGeometry(
            image_width=512,
            image_height=384,
            fields_x=fields_x,
            fields_y=fields_y,
            divisions=2,
            overlap_x=16,
            overlap_y=12,
            levels=6,
            missing_fields=_missing_fields(rng, fields_x, fields_y),
        )
    # Small slides vary their tiling so the converter sees more than one shape.
    fields_x, fields_y = 6 + index % 2, 5
    divisions = 2 if index % 3 != 2 else 1
    return MiraxGeometry(
        image_width=256,
        image_height=192,
        fields_x=fields_x * (2 // divisions),
        fields_y=fields_y * (2 // divisions),
        divisions=divisions,
        overlap_x=(16, 8, 0)[index % 3],
        overlap_y=(12, 6, 0)[index % 3],
        levels=4,
        missing_fields=_missing_fields(
            rng, fields_x * (2 // divisions), fields_y * (2 // divisions)
        ),
    )


def slide_ids_for(patients: list[SyntheticPatient], n_slides: int) -> list[str]:
    """The first patient gets two slides when there are three or more, as real patients can."""
    ids: list[str] = []
    for i in range(n_slides):
        if n_slides >= 3 and i == 1:
            ids.append(f"{patients[0].patient_id}_2_bm")
        else:
            p = patients[i if n_slides < 3 or i == 0 else i - 1]
            ids.append(f"{p.patient_id}_1_bm")
    return ids


PREVIEW_VARIANTS: tuple[PreviewExtent, ...] = ("bounds", "canvas", "none")
"""What real MIRAX previews cover; the demo slides cycle through them."""


def scanner_slide_name(slide_id: str, created: datetime, index: int) -> str:
    """SLIDE_NAME as scanners write it: the slide id itself, a patient-like case text, or
    nothing. The demo slides cycle through the three, so no test confirms one shape."""
    return (slide_id, f"KM {created:%Y}-{index + 17:04d} MUSTERMANN", "")[index % 3]


def write_demo_dataset(
    root: Path,
    slides: int = 4,
    seed: int = 0,
    size: Size = "small",
    force: bool = False,
    image_format: Literal["JPEG", "PNG"] = "JPEG",
    dimensions: tuple[int, int] | None = None,
) -> DemoDataset:
    """Write collection.yaml and raw/ under `root`; raw/ appears only when complete.

    `dimensions` (width, height): large-style slides with bounds of at least that size
    (`--width/--height` of `demo-data`)."""
    if slides < 1:
        raise ValueError("--slides must be at least 1")
    if dimensions is not None and min(dimensions) < 1:
        raise ValueError("--width and --height must be positive")
    layout = DataLayout.at(root)
    if layout.raw.exists():
        if not force:
            raise FileExistsError(
                f"{layout.raw} already exists; demo-data never overwrites inputs "
                "(pass --force to replace the demo dataset)"
            )
        shutil.rmtree(layout.raw)
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.root / ".raw-incomplete"
    shutil.rmtree(tmp, ignore_errors=True)

    master = np.random.default_rng(seed)
    n_patients = slides - 1 if slides >= 3 else slides
    patients = make_patients(np.random.default_rng([seed, 1]), n_patients)
    slide_ids = slide_ids_for(patients, slides)

    truths: dict[str, MiraxGroundTruth | BankedGroundTruth] = {}
    sources: list[SlideAnnotationSource] = []
    slides_dir = tmp / "slides"
    slides_dir.mkdir(parents=True)
    plans: list[tuple[int, str, SmearCells | None, MiraxSlideSpec]] = []
    for index, slide_id in enumerate(slide_ids):
        rng = np.random.default_rng([seed, 100 + index])
        geometry = slide_geometry(rng, size, index, dimensions)
        # Drawn first, as always, so that the other sizes keep their bytes; a full slide's
        # cells come from its bank.
        cells = scatter_cells(rng, *geometry.canvas_size) if size != "full" else None
        created = datetime(2019, 1, 7, 8, 0, 0) + timedelta(
            days=int(rng.integers(0, 900)), seconds=int(rng.integers(0, 36000))
        )
        spec = replace(
            MiraxSlideSpec(),
            geometry=geometry,
            image_format=image_format,
            mirax_slide_id=f"{rng.integers(0, 2**63):016x}-{index:04d}-synthetic",
            slide_name=scanner_slide_name(slide_id, created, index),
            label_text=f"MUSTERMANN, Erika\n*0{1 + index % 9}.03.201{index % 10}\nKM {created:%Y}-{index + 17:04d}",
            creation_datetime=created if index % 2 == 0 else None,
            preview=PREVIEW_VARIANTS[(index + 1) % len(PREVIEW_VARIANTS)],
            scanner_hardware_id=f"{int(master.integers(0, 2**31)):08X}",
        )
        plans.append((index, slide_id, cells, spec))
    banks: dict[str, BankedSlide] = {}
    encoded: dict[str, Bank] = {}
    if size == "full":
        # Scanner-like JPEGs (q80 4:2:2 of noisy camera images) give real BMDeep's bytes per
        # pixel; the whole dataset must fit before anything is written.
        plans = [
            (i, sid, cells, replace(spec, jpeg_quality=80, jpeg_subsampling=1))
            for i, sid, cells, spec in plans
        ]
        banks = {
            sid: BankedSlide.make(spec.geometry, seed=seed * 1000 + i) for i, sid, _, spec in plans
        }
        encoded = {sid: Bank(banks[sid], spec) for _, sid, _, spec in plans}
        need = sum(estimated_bytes(banks[sid], encoded[sid]) for _, sid, _, _ in plans)
        free = shutil.disk_usage(layout.root).free
        if need * 1.05 + (1 << 30) > free:
            raise NotEnoughDiskError(
                f"{slides} full slide(s) need about {need / 1e9:.1f} GB plus 1 GB of headroom; "
                f"{free / 1e9:.1f} GB are free on {layout.root}"
            )
    for index, slide_id, cells, spec in plans:
        geometry = spec.geometry
        logger.info("writing slide %d/%d %s (%s)", index + 1, slides, slide_id, size)
        final_path = layout.mrxs(slide_id)
        if size == "full":
            bank = banks[slide_id]
            write_banked_mirax(slides_dir / f"{slide_id}.mrxs", spec, bank, encoded[slide_id])
            truths[slide_id] = BankedGroundTruth(spec=spec, slide=bank, mrxs_path=final_path)
            field_rects, cell_boxes, lineage, nucleus_boxes = bank.annotated_cells()
        else:
            assert cells is not None
            truth = write_mirax(slides_dir / f"{slide_id}.mrxs", spec, cells)
            truths[slide_id] = replace(truth, mrxs_path=final_path)
            cell_boxes, lineage = truth.cell_boxes()
            nucleus_boxes = truth.nucleus_boxes()
            field_rects = geometry.field_rects()
        sources.append(
            SlideAnnotationSource(
                slide_id=slide_id,
                field_rects=field_rects,
                cell_boxes=cell_boxes,
                cell_lineage=lineage,
                nucleus_boxes=nucleus_boxes,
                expert_labels=index % 4 != 2,  # one slide in four has only unlabeled cells
            )
        )
    (tmp / "clinical").mkdir()
    write_clinical_csv(
        tmp / "clinical" / "clinical.csv", patients, np.random.default_rng([seed, 2])
    )
    write_lab_values_xlsx(
        tmp / "clinical" / "lab_values.xlsx", patients, np.random.default_rng([seed, 3])
    )
    (tmp / "annotations").mkdir()
    write_annotation_csvs(tmp / "annotations", sources, np.random.default_rng([seed, 4]))
    tmp.rename(layout.raw)
    if not layout.collection_yaml.exists() or force:
        layout.collection_yaml.write_text(DEFAULT_COLLECTION_YAML, encoding="utf-8")
    return DemoDataset(layout=layout, patients=tuple(patients), slides=truths)
