"""Reading a variant's output: files, base size, dciodvfy errors, PSNR against the truth."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.conversion.common import cores


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def base_size(files: Sequence[Path]) -> tuple[int, int]:
    import pydicom

    best = (0, 0)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - not a DICOM file
            continue
        flavor = list(getattr(ds, "ImageType", ["", "", "VOLUME"]))  # OrthancWSI writes none
        if "VOLUME" in flavor and "TotalPixelMatrixColumns" in ds:
            size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
            best = max(best, size, key=lambda s: s[0] * s[1])
    return best


def dciodvfy_errors(files: Sequence[Path]) -> tuple[int, int, list[str]]:
    """(error count, files with an error, a few example messages) over every file."""
    from concurrent.futures import ThreadPoolExecutor

    from bms_pipeline.core.validation.dicom3tools import dciodvfy

    with ThreadPoolExecutor(max_workers=max(1, cores())) as pool:
        results = list(pool.map(lambda p: dciodvfy(p, "bench"), files))
    errors = [[m for m in msgs if m.level == "Error"] for msgs in results]
    examples = sorted({m.message for errs in errors for m in errs})[:5]
    return sum(len(e) for e in errors), sum(1 for e in errors if e), examples


class TruthRegions:
    """Random size x size level-0 regions of the ground truth (rendered once, masked to
    scanned pixels) and the PSNR of any converted series or of the source against them."""

    def __init__(self, truth, regions: int = 20, size: int = 1024, seed: int = 0) -> None:
        self.truth = truth
        self.size = size
        self.regions: list[tuple[int, int, Any, Any]] = []
        self._source: dict[str, float] | None = None
        if regions <= 0:
            return
        import numpy as np

        bx, by, bw, bh = truth.bounds
        rng = np.random.default_rng(seed)
        for _ in range(50 * regions):
            if len(self.regions) == regions:
                break
            x = int(rng.integers(0, max(1, bw - size)))
            y = int(rng.integers(0, max(1, bh - size)))
            mask = truth.scanned_mask(x + bx, y + by, size, size)
            if mask.mean() < 0.5:
                continue
            self.regions.append((x, y, mask, truth.region(x + bx, y + by, size, size)[mask]))

    def _psnr(self, read) -> float:
        import numpy as np

        squared = 0.0
        count = 0
        for x, y, mask, want in self.regions:
            got = read(x, y)[mask].astype(np.float64)
            squared += float(((got - want) ** 2).sum())
            count += want.size
        mse = squared / max(count, 1)
        return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)

    def measure(self, sm_dir: Path) -> dict[str, float]:
        import numpy as np
        from wsidicom import WsiDicom

        with WsiDicom.open(sm_dir) as wsi:
            dicom = self._psnr(
                lambda x, y: np.asarray(
                    wsi.read_region((x, y), 0, (self.size, self.size)).convert("RGB")
                )
            )
        return {
            "regions": len(self.regions),
            "size": self.size,
            "dicom": dicom,
            "source": self.source(),
        }

    def source(self) -> float:
        """PSNR of OpenSlide's read of the MIRAX source itself: the ceiling for a converter."""
        if self._source is None:
            import numpy as np
            import openslide

            bx, by = self.truth.bounds[:2]
            with openslide.OpenSlide(str(self.truth.mrxs_path)) as slide:
                self._source = self._psnr(  # pyright: ignore[reportAttributeAccessIssue]
                    lambda x, y: np.asarray(
                        slide.read_region((x + bx, y + by), 0, (self.size, self.size))
                    )[..., :3]
                )
        return self._source  # pyright: ignore[reportReturnType]
