"""IDC's SM conventions (1024 px tiles, levels 0, 2, 4, ...) against the old defaults
(512 px tiles, every level) on the large demo slide, alternating, in one run.

    python3.12 -m uv run python -m benchmarks.bench_conventions --runs 2

Each conversion runs in a fresh process (the full IDC metadata and the publication gate,
as `sm_series` converts), so peak RSS is the conversion's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_conversion import ensure_dataset, single_slide

MODULE = "benchmarks.bench_conventions"
VARIANTS = {
    "idc": {"tile_size": 1024, "include_levels": [0, 2, 4, 6, 8, 10]},
    "old": {"tile_size": 512, "include_levels": None},
}


def child(variant: str, root: str, out: str) -> None:
    from bms_pipeline.core.collection import CollectionConfig
    from bms_pipeline.core.dicom.convert import ConversionSettings
    from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
    from bms_pipeline.core.layout import DataLayout

    layout = DataLayout.at(root, out)
    collection = CollectionConfig.load(layout.collection_yaml)
    slide_id, _ = single_slide(Path(root))
    values = VARIANTS[variant]
    levels = values["include_levels"]
    settings = ConversionSettings.for_collection(
        collection.conventions.sm,
        tile_size=int(values["tile_size"]),
        include_levels=tuple(levels) if isinstance(levels, list) else None,
    )
    started = time.perf_counter()
    result = convert_layout_slide(layout, collection, slide_id, settings)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "variant": variant,
                "wall_s": wall,
                "conversion_s": result.seconds,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": usage.ru_maxrss / 1024,
                "files": len(result.files),
                "bytes": result.total_bytes,
                "gigapixels": result.base_megapixels / 1000,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cache", default=".bench")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "ROOT", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    root = ensure_dataset(Path(args.cache), "large", 0, 1)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for run in range(args.runs):
        for variant in VARIANTS if run % 2 == 0 else reversed(list(VARIANTS)):
            out = Path(tempfile.mkdtemp(prefix=f"conv-{variant}-", dir=args.cache))
            try:
                done = subprocess.run(
                    [sys.executable, "-m", MODULE, "--child", variant, str(root), str(out)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            finally:
                shutil.rmtree(out, ignore_errors=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[variant].append(row)
            print(
                f"run {run + 1} {variant}: {row['conversion_s']:.1f} s conversion, "
                f"{row['peak_rss_mib']:.0f} MiB, {row['files']} files",
                flush=True,
            )
    print(
        "\n| settings | conversion s (median) | s per gigapixel | CPU s | peak RSS MiB | files | MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, rows in results.items():
        med = statistics.median(r["conversion_s"] for r in rows)
        print(
            f"| {variant} | {med:.1f} | {med / rows[0]['gigapixels']:.1f} | "
            f"{statistics.median(r['cpu_s'] for r in rows):.1f} | "
            f"{max(r['peak_rss_mib'] for r in rows):.0f} | {rows[0]['files']} | {rows[0]['bytes'] / 1e6:.0f} |"
        )
    idc = statistics.median(r["conversion_s"] for r in results["idc"])
    old = statistics.median(r["conversion_s"] for r in results["old"])
    print(f"\nIDC settings / old settings: {idc / old:.2f}")


if __name__ == "__main__":
    main()
