"""Where the benchmark runs and what it compares: paths, variants, tile and quality."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODULE = "benchmarks.bench_conversion"
VARIANTS = "ABCDEFGHI"
TILE = 512
QUALITY = 80
GIGA = 1e9
MIB = 1 << 20

DESCRIPTIONS = {
    "A": "`sm_series` asset through Dagster (IDC metadata, q80 4:2:2, 512, EOT, workers = cores)",
    "B": "wsidicomizer API, `WsiDicomizer.convert(include_label=False)`, defaults otherwise",
    "C": "`wsidicomizer` CLI, `--no-label`, defaults otherwise (q80, 512, 4:2:0, chunk 100)",
    "D": "codec limit: libjpeg-turbo decode of every stored source JPEG + encode of as many "
    "512 px tiles (q80 4:2:2), a thread per core",
    "E": "OrthancWSIDicomizer + OpenSlide (`--threads` = cores, q80, 512, `--max-size 0`)",
    "F": "lever: A with `regenerate_pyramid=True` (levels 1+ downsampled from level 0 "
    "instead of read through OpenSlide), patched into the child by the benchmark",
    "G": "before: A with wsidicomizer's stock `OpenSlideSource` instead of the project's "
    "`FastOpenSlideSource` (patched into the child), i.e. A as it was before that change",
    "H": "before: A with every pixel read through OpenSlide with its default 32 MiB cache "
    "(`OpenSlideReadSource`), i.e. A before the direct MIRAX reader and the cache sizing",
    "I": "lever: A with every pixel read through OpenSlide, its cache sized as A's "
    "(`OpenSlideReadSource`): the cache alone, without the direct MIRAX reader",
}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
