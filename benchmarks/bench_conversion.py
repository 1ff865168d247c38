"""Benchmark: MIRAX to DICOM conversion against its anchors (issue 7).

Run from the project root with::

    uv run --with py-spy python -m benchmarks.bench_conversion --runs 3 --profile

(``--with py-spy`` puts py-spy in a throwaway overlay environment; it is only needed for
``--profile``.) It writes ``docs/benchmarks.md`` and prints the same markdown.

On the same cached ``large`` synthetic slide (> 30,000 x 30,000 px after cropping) and with
comparable output settings (baseline JPEG, quality 80, 512 x 512 tiles), it measures:

* **A** the ``sm_series`` asset materialized through Dagster (``slides_job`` restricted to
  ``sm_series`` without its checks, in-process executor, the persistent SQLite instance a run worker would load);
* **B** the bare wsidicomizer Python API, ``WsiDicomizer.convert(mrxs, out,
  include_label=False)``, all other arguments at their defaults;
* **C** the ``wsidicomizer`` CLI with ``--no-label``; its JPEG is 4:2:0 where the API's default
  is 4:2:2, and ``--subsampling`` cannot change that in wsidicomizer 0.31 (click hands the enum
  member to ``Subsampling.from_string``, which rejects it);
* **D** the codec limit: every stored JPEG of the levels written is decoded (straight from the
  Data*.dat files, located through Index.dat) and as many 512 x 512 tiles as A writes are
  encoded with the encoder wsidicom uses (imagecodecs/libjpeg-turbo, q80, 4:2:2, YCbCr), on a
  thread per core;
* **E** OrthancWSIDicomizer reading MIRAX through OpenSlide (installed with apt if missing,
  otherwise skipped with a message);
* **F** a lever: A with ``regenerate_pyramid=True``; **G** the baseline before the project's
  ``FastOpenSlideSource``: A with wsidicomizer's stock ``OpenSlideSource``. Both are patched
  into their child process only (``patch_converter``); nothing in ``bms_pipeline`` changes.

Every variant runs in a fresh child process; wall time is measured around the child and peak
RSS comes from ``os.wait4``. The variants alternate run by run (the order rotates), every
figure is the median over the runs, and every comparison is a ratio against A measured in
the same invocation, because the machine is shared. dciodvfy runs (untimed) on every output
file of each variant's first run; level-0 PSNR of A's output is measured against the
generator's ground truth.

It also times each per-tile stage on one thread (stock wsidicomizer path versus the project's
``FastOpenSlideSource`` path, checking that their bytes agree), measures the Dagster overhead
per slide (a small slide through the asset versus the bare ``convert_slide`` on the same slide,
plus cold import times) and an 8-slide backfill with ``bms-pipeline run
--jobs 2`` versus ``--jobs 1`` (wall time and CPU use), and with ``--profile`` it samples B
and A under py-spy and summarises where the CPU time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime

from benchmarks.conversion.bench import (  # noqa: F401
    Bench,
    Sample,
    VariantStats,
    base_size_of_small,
    step_seconds,
)
from benchmarks.conversion.children import (  # noqa: F401
    CHILDREN,
    STAGES,
    child_codec,
    child_convert_slide,
    child_dagster,
    child_init_instance,
    child_stages,
    child_wsidicomizer_api,
    patch_converter,
)
from benchmarks.conversion.common import (  # noqa: F401
    DESCRIPTIONS,
    GIGA,
    MIB,
    MODULE,
    PROJECT_ROOT,
    QUALITY,
    TILE,
    VARIANTS,
    cores,
)
from benchmarks.conversion.datasets import (  # noqa: F401
    ensure_dataset,
    ground_truth,
    level_records,
    output_tiles,
    run_root,
    single_slide,
)
from benchmarks.conversion.measuring import (  # noqa: F401
    RUNNER,
    Proc,
    ensure_orthanc,
    openslide_library,
    run_child,
    run_measured,
    start_runner,
    tool,
)
from benchmarks.conversion.outputs import (  # noqa: F401
    TruthRegions,
    base_size,
    dciodvfy_errors,
    dicom_files,
)
from benchmarks.conversion.profiling import (  # noqa: F401
    BUCKETS,
    WAITING,
    profile_buckets,
    summarise_profile,
)
from benchmarks.conversion.report import fmt, machine_info, render, source_state  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        CHILDREN[argv[1]](json.loads(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # pyright: ignore[reportOptionalMemberAccess]
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--size", choices=("large", "small"), default="large")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=VARIANTS, help="subset of ABCDE, A first")
    parser.add_argument("--skip-orthanc", action="store_true", help="leave out variant E")
    parser.add_argument("--no-install", action="store_true", help="never apt-get orthanc-wsi")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: cores)")
    parser.add_argument("--overhead-runs", type=int, default=5, help="0 to skip")
    parser.add_argument("--backfill-runs", type=int, default=2, help="0 to skip")
    parser.add_argument("--backfill-slides", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="profile B with py-spy")
    parser.add_argument("--profile-rate", type=int, default=100)
    parser.add_argument(
        "--stage-rows",
        type=int,
        default=4,
        help="tile rows per level timed stage by stage (0 to skip)",
    )
    parser.add_argument("--py-spy", default=None, help="path to py-spy (default: PATH)")
    parser.add_argument("--psnr-regions", type=int, default=20)
    parser.add_argument("--no-validate", action="store_true", help="skip dciodvfy")
    parser.add_argument("--keep", action="store_true", help="keep outputs under .bench/runs")
    parser.add_argument("--cache", default=".bench")
    parser.add_argument("--out", default="docs/benchmarks.md", help="report path ('' for none)")
    args = parser.parse_args(argv)
    args.variants = "".join(k for k in VARIANTS if k in args.variants.upper())
    if args.skip_orthanc:
        args.variants = args.variants.replace("E", "")
    if not args.variants.startswith("A"):
        parser.error("--variants must include A (every ratio is against A)")

    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bench = Bench(args)
    print(
        f"slide {bench.slide_id}: {bench.bounds[0]} x {bench.bounds[1]} px, "
        f"{bench.levels} levels, {bench.tiles} output tiles; workers {bench.workers}",
        flush=True,
    )
    bench.run_all()
    overhead = None
    if args.overhead_runs > 0:
        print("Dagster overhead on a small slide ...", flush=True)
        overhead = bench.overhead()
    backfill = None
    if args.backfill_runs > 0:
        print(f"backfill of {args.backfill_slides} small slides ...", flush=True)
        backfill = bench.backfill()
    stages = None
    if args.stage_rows > 0:
        print("per-tile stage costs ...", flush=True)
        stages = bench.stages()
    profile = None
    if args.profile:
        print("profiling B with py-spy ...", flush=True)
        profile = bench.profile()
    report = render(bench, overhead, backfill, stages, profile, argv, started, load_before)
    print()
    print(report)
    if args.out:
        out = PROJECT_ROOT / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report, encoding="utf-8")
        print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(bench.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
