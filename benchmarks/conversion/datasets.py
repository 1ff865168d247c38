"""The demo datasets the benchmark converts, cached by size and seed, and their MIRAX index."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.conversion.common import TILE


def ensure_dataset(cache: Path, size: str, seed: int, slides: int) -> Path:
    """The data root of a cached demo dataset (written once, reused by every run)."""
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    root = cache / f"{size}-seed{seed}" if slides == 1 else cache / f"{size}{slides}-seed{seed}"
    if not (root / "raw" / "slides").is_dir():
        print(
            f"writing the {size} demo dataset ({slides} slide(s), seed {seed}) to {root} ...",
            flush=True,
        )
        started = time.perf_counter()
        write_demo_dataset(root, slides=slides, seed=seed, size=size, force=True)  # type: ignore[arg-type]
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return root


def single_slide(root: Path) -> tuple[str, Path]:
    (mrxs,) = sorted((root / "raw" / "slides").glob("*.mrxs"))
    return mrxs.stem, mrxs


def ground_truth(size: str, seed: int, mrxs: Path, index: int = 0):
    """Rebuild the writer's ground truth of a cached slide by replaying the demo generator's
    random streams (`write_demo_dataset` draws geometry, then cells, from one generator)."""
    from dataclasses import replace

    import numpy as np

    from bms_pipeline.core.synthetic.demo import slide_geometry
    from bms_pipeline.core.synthetic.mirax_writer import MiraxGroundTruth, MiraxSlideSpec
    from bms_pipeline.core.synthetic.smear_content import scatter_cells

    rng = np.random.default_rng([seed, 100 + index])
    geometry = slide_geometry(rng, size, index)  # type: ignore[arg-type]
    cells = scatter_cells(rng, *geometry.canvas_size)
    return MiraxGroundTruth(replace(MiraxSlideSpec(), geometry=geometry), cells, mrxs)


def run_root(data_root: Path, scratch: Path) -> Path:
    """A fresh data root whose raw/ is the cached one (symlinked, never written)."""
    root = Path(tempfile.mkdtemp(prefix="root-", dir=scratch))
    (root / "raw").symlink_to(data_root / "raw")
    shutil.copy2(data_root / "collection.yaml", root / "collection.yaml")
    return root


def level_records(mrxs: Path) -> tuple[list[Path], dict[int, list[tuple[int, int, int]]]]:
    """(data files, {zoom level: [(fileno, offset, length), ...]}) from Index.dat."""
    from bms_pipeline.core.mirax.format import index_records, slide_files

    files = slide_files(mrxs)
    slide_id = files.sections["GENERAL"]["SLIDE_ID"]
    records: dict[int, list[tuple[int, int, int]]] = {}
    for record in index_records(files.index.read_bytes(), slide_id, files):
        if record.level is not None:
            records.setdefault(record.level, []).append(
                (record.fileno, record.offset, record.length)
            )
    return list(files.datafiles), records


def output_tiles(width: int, height: int, levels: int, tile: int = TILE) -> int:
    """Tiles wsidicomizer writes for a cropped base of width x height and `levels` dyadic
    source levels (level size = base // downsample)."""
    total = 0
    for k in range(levels):
        w, h = width // 2**k, height // 2**k
        total += math.ceil(w / tile) * math.ceil(h / tile)
    return total
