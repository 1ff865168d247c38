"""Shared test helpers: small slides written by the project's own MIRAX writer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from bms_pipeline.core.synthetic.mirax_writer import (
    MiraxGeometry,
    MiraxGroundTruth,
    MiraxSlideSpec,
    write_mirax,
)
from bms_pipeline.core.synthetic.smear_content import scatter_cells

PATIENT = "0123456789ABCDEF0123456789ABCDEF"

TINY_GEOMETRY = MiraxGeometry(
    image_width=128,
    image_height=96,
    fields_x=5,
    fields_y=4,
    divisions=2,
    overlap_x=10,
    overlap_y=6,
    levels=3,
    missing_fields=frozenset(
        {(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (0, 1), (0, 2), (0, 3), (2, 2)}
    ),
)


def write_test_slide(
    folder: Path,
    slide_id: str = f"{PATIENT}_1_bm",
    seed: int = 7,
    geometry: MiraxGeometry = TINY_GEOMETRY,
    **spec_changes,
) -> MiraxGroundTruth:
    rng = np.random.default_rng(seed)
    cells = scatter_cells(rng, *geometry.canvas_size, density_per_mpx=120)
    spec = replace(MiraxSlideSpec(), geometry=geometry, **spec_changes)
    return write_mirax(Path(folder) / f"{slide_id}.mrxs", spec, cells)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
