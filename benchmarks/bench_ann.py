"""Benchmark: 1,000,000 detection boxes into one ANN file (issue 5: aim for < 10 s).

Run with ``uv run python -m benchmarks.bench_ann [--boxes N]``. A small
synthetic slide is converted in a child process first, so that the peak RSS reported here
(``resource.getrusage``, this process only) is the encoder's, not wsidicomizer's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COLLECTION_ID = "bonemarrowwsi_pediatricleukemia"


def _convert_small_slide(root: Path) -> str:
    """Write and convert a one-slide demo dataset under `root`; returns its slide id."""
    from bms_pipeline.core.collection import CollectionConfig
    from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    dataset = write_demo_dataset(root, slides=1, seed=11)
    layout = dataset.layout
    collection = CollectionConfig.load(layout.collection_yaml)
    (slide_id,) = dataset.slides
    convert_layout_slide(layout, collection, slide_id)
    return slide_id


def _convert_in_child(root: Path) -> str:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_convert_small_slide, (root,))


def random_boxes(n: int, width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` boxes of 8-80 px inside a width x height image, and scores in 0..1."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(8.0, 80.0, size=(n, 2))
    x1 = rng.uniform(0.0, width - size[:, 0])
    y1 = rng.uniform(0.0, height - size[:, 1])
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1)
    return boxes, rng.uniform(0.0, 1.0, size=n)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boxes", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    from bms_pipeline.core.annotations.ann import (
        base_level_dataset,
        build_detections_ann,
        read_series_content,
        write_ann,
    )
    from bms_pipeline.core.layout import DataLayout

    with tempfile.TemporaryDirectory(prefix="bench-ann-") as tmp:
        root = Path(tmp)
        slide_id = _convert_in_child(root)
        layout = DataLayout.at(root)
        sm_base = base_level_dataset(layout.sm_dir(slide_id))
        width, height = int(sm_base.TotalPixelMatrixColumns), int(sm_base.TotalPixelMatrixRows)
        boxes, scores = random_boxes(args.boxes, width, height)
        rss_before = _peak_rss_mb()

        started = time.perf_counter()
        ann = build_detections_ann(boxes, scores, slide_id, COLLECTION_ID, sm_base)
        encoded = time.perf_counter()
        out = root / "detections.dcm"
        size = write_ann(ann, out)
        written = time.perf_counter()
        del ann

        content = read_series_content(root)["detections"]
        read = time.perf_counter()
        (group,) = content.groups
        assert group.count == args.boxes
        assert np.abs(group.boxes - boxes).max() <= 0.5

        print(f"boxes            {args.boxes:,}")
        print(f"image            {width} x {height} px (slide {slide_id})")
        print(f"encode seconds   {encoded - started:.2f}")
        print(f"write seconds    {written - encoded:.2f}")
        print(f"total seconds    {written - started:.2f}  (encode + write)")
        print(f"read-back sec.   {read - written:.2f}  (highdicom.ann.annread + decode)")
        print(f"peak RSS MiB     {_peak_rss_mb():.0f}  (before encoding: {rss_before:.0f})")
        print(f"file size MiB    {size / 2**20:.1f}  ({size / args.boxes:.1f} bytes per box)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
