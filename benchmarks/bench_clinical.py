"""Benchmark: a 100,000-row lab sheet through build_clinical_tables and write_outputs.

Run with ``uv run python -m benchmarks.bench_clinical [--rows N]``.
The synthetic clinical.csv and lab_values.xlsx are written by the project's own generator
in a child process first, so the peak RSS reported here (``resource.getrusage``, this
process only) is the table builder's and writer's, not xlsxwriter's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _write_inputs(root: str, rows: int, seed: int) -> None:
    """Write collection.yaml, clinical.csv and lab_values.xlsx with ``rows`` patients."""
    import numpy as np

    from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.core.synthetic.tables import (
        make_patients,
        write_clinical_csv,
        write_lab_values_xlsx,
    )

    layout = DataLayout.at(root)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.collection_yaml.write_text(DEFAULT_COLLECTION_YAML, encoding="utf-8")
    patients = make_patients(np.random.default_rng([seed, 1]), rows)
    write_clinical_csv(layout.clinical_csv, patients, np.random.default_rng([seed, 2]))
    write_lab_values_xlsx(layout.lab_values_xlsx, patients, np.random.default_rng([seed, 3]))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])  # pyright: ignore[reportOptionalMemberAccess]
    parser.add_argument("--rows", type=int, default=100_000, help="lab sheet rows (patients)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_clinical_"))
    root = workdir / "data"
    try:
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=_write_inputs, args=(str(root), args.rows, args.seed)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"input generation failed (exit {child.exitcode})", file=sys.stderr)
            return 1
        generated = time.perf_counter() - started

        from bms_pipeline.core.clinical.tables import build_clinical_tables, write_outputs
        from bms_pipeline.core.collection import CollectionConfig
        from bms_pipeline.core.layout import DataLayout

        layout = DataLayout.at(root)
        collection = CollectionConfig.load(layout.collection_yaml)
        baseline = _peak_rss_mib()
        t0 = time.perf_counter()
        tables = build_clinical_tables(layout, collection)
        t1 = time.perf_counter()
        written = write_outputs(tables, layout)
        t2 = time.perf_counter()
        peak = _peak_rss_mib()

        xlsx_mib = layout.lab_values_xlsx.stat().st_size / 2**20
        db_mib = written.duckdb.stat().st_size / 2**20
        print(f"lab rows:             {tables.laboratory.height:,} ({xlsx_mib:.1f} MiB xlsx)")
        print(f"laboratory columns:   {tables.laboratory.width}")
        print(f"input generation:     {generated:.1f} s (child process, not measured below)")
        print(f"build_clinical_tables {t1 - t0:.2f} s")
        print(f"write_outputs         {t2 - t1:.2f} s (parquet, duckdb {db_mib:.1f} MiB, schemas)")
        print(f"total                 {t2 - t0:.2f} s")
        print(f"peak RSS              {peak:.0f} MiB (imports alone: {baseline:.0f} MiB)")
        print(f"warnings              {len(tables.warnings)}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
