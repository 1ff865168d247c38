"""Procedural smear content: pixels that can be rendered for any region, exactly and repeatably.

The canvas is never held in memory as a whole, so a `large` slide (tens of gigapixels of
source images) renders field by field while the ground truth stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND_RGB = np.array([236.0, 228.0, 234.0], dtype=np.float32)
"""Pale, slightly pink background of a May-Gruenwald-Giemsa smear."""

RBC_RGB = np.array([214.0, 150.0, 160.0], dtype=np.float32)
RBC_CENTRE_RGB = np.array([228.0, 188.0, 196.0], dtype=np.float32)
CYTOPLASM_RGB = {
    "lymphoid": np.array([190.0, 196.0, 226.0], dtype=np.float32),
    "myeloid": np.array([222.0, 196.0, 214.0], dtype=np.float32),
    "erythroid": np.array([176.0, 170.0, 214.0], dtype=np.float32),
}
NUCLEUS_RGB = {
    "lymphoid": np.array([92.0, 62.0, 140.0], dtype=np.float32),
    "myeloid": np.array([120.0, 80.0, 150.0], dtype=np.float32),
    "erythroid": np.array([62.0, 40.0, 96.0], dtype=np.float32),
}
LINEAGES = tuple(CYTOPLASM_RGB)


@dataclass(frozen=True)
class SmearCells:
    """Disc-shaped cells on the canvas, in level-0 pixels of the whole MIRAX canvas.

    Red cells have ``nucleus_r == 0``. Nucleated cells carry a lineage index into
    `LINEAGES` and an (offset) nucleus, whose bounding box is what a nuclei detector finds.
    """

    cx: np.ndarray  # float64
    cy: np.ndarray
    r: np.ndarray
    nucleus_dx: np.ndarray
    nucleus_dy: np.ndarray
    nucleus_r: np.ndarray
    lineage: np.ndarray  # int8, -1 for red cells

    @property
    def nucleated(self) -> np.ndarray:
        return self.nucleus_r > 0

    def cell_boxes(self) -> np.ndarray:
        """(n, 4) x1, y1, x2, y2 of every cell's disc."""
        return np.stack(
            [self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r], axis=1
        )

    def nucleus_boxes(self) -> np.ndarray:
        """(n, 4) x1, y1, x2, y2 of every nucleus (zero-size for red cells)."""
        nx = self.cx + self.nucleus_dx
        ny = self.cy + self.nucleus_dy
        return np.stack(
            [nx - self.nucleus_r, ny - self.nucleus_r, nx + self.nucleus_r, ny + self.nucleus_r],
            axis=1,
        )


def scatter_cells(
    rng: np.random.Generator, width: int, height: int, density_per_mpx: float = 40.0
) -> SmearCells:
    """Scatter red and nucleated marrow cells over a canvas, about one in four nucleated.

    Sizes follow a 0.11 um/px scan loosely (red cell ~7 um, marrow cell ~10-14 um), shrunk
    by half so that the small demo slides still hold many cells.
    """
    n = max(8, int(width * height / 1e6 * density_per_mpx))
    cx = rng.uniform(0, width, n)
    cy = rng.uniform(0, height, n)
    nucleated = rng.random(n) < 0.28
    r = np.where(nucleated, rng.uniform(26, 40, n), rng.uniform(15, 21, n))
    nucleus_r = np.where(nucleated, r * rng.uniform(0.55, 0.75, n), 0.0)
    angle = rng.uniform(0, 2 * np.pi, n)
    shift = np.where(nucleated, (r - nucleus_r) * rng.uniform(0.0, 0.8, n), 0.0)
    lineage = np.where(nucleated, rng.integers(0, len(LINEAGES), n), -1).astype(np.int8)
    # Draw nucleated cells last so that they sit on top of red cells.
    order = np.argsort(nucleated, kind="stable")
    return SmearCells(
        cx=cx[order],
        cy=cy[order],
        r=r[order],
        nucleus_dx=(shift * np.cos(angle))[order],
        nucleus_dy=(shift * np.sin(angle))[order],
        nucleus_r=nucleus_r[order],
        lineage=lineage[order],
    )


def _blend(region: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    region += alpha[..., None] * (colour - region)


def render_region(
    cells: SmearCells, x0: float, y0: float, width: int, height: int, scale: float = 1.0
) -> np.ndarray:
    """Render `width` x `height` pixels of the canvas as float32 RGB in 0..255.

    Output pixel (i, j) samples the canvas at (x0 + (j + 0.5) * scale, y0 + (i + 0.5) * scale),
    so `scale=1` gives exact level-0 pixels and larger scales give previews.
    """
    gy_all = y0 + (np.arange(height, dtype=np.float32)[:, None] + 0.5) * scale
    gx_all = x0 + (np.arange(width, dtype=np.float32)[None, :] + 0.5) * scale
    shade = 5.0 * np.sin(gx_all / 310.0) * np.cos(gy_all / 420.0)
    out = np.empty((height, width, 3), dtype=np.float32)
    out[:] = BACKGROUND_RGB
    out += shade[..., None]
    x_end = x0 + width * scale
    y_end = y0 + height * scale
    hit = (
        (cells.cx + cells.r >= x0)
        & (cells.cx - cells.r < x_end)
        & (cells.cy + cells.r >= y0)
        & (cells.cy - cells.r < y_end)
    )
    for i in np.flatnonzero(hit):
        cx, cy, r = cells.cx[i], cells.cy[i], cells.r[i]
        j0 = max(int(np.floor((cx - r - x0) / scale)) - 1, 0)
        i0 = max(int(np.floor((cy - r - y0) / scale)) - 1, 0)
        j1 = min(int(np.ceil((cx + r - x0) / scale)) + 2, width)
        i1 = min(int(np.ceil((cy + r - y0) / scale)) + 2, height)
        if j0 >= j1 or i0 >= i1:
            continue
        sub = out[i0:i1, j0:j1]
        gy = gy_all[i0:i1]
        gx = gx_all[:, j0:j1]
        dist = np.hypot(gx - cx, gy - cy)
        edge = np.clip((r - dist) / scale + 0.5, 0.0, 1.0)
        if cells.nucleus_r[i] <= 0:
            _blend(sub, edge, RBC_RGB)
            centre = np.clip((0.55 * r - dist) / scale, 0.0, 1.0) * 0.8
            _blend(sub, centre, RBC_CENTRE_RGB)
            continue
        name = LINEAGES[int(cells.lineage[i])]
        _blend(sub, edge, CYTOPLASM_RGB[name])
        nd = np.hypot(gx - (cx + cells.nucleus_dx[i]), gy - (cy + cells.nucleus_dy[i]))
        nucleus = np.clip((cells.nucleus_r[i] - nd) / scale + 0.5, 0.0, 1.0)
        _blend(sub, nucleus, NUCLEUS_RGB[name])
    return out


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
