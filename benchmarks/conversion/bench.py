"""The benchmark: every variant in alternating rounds, the overhead and backfill runs."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.conversion.common import MIB, PROJECT_ROOT, QUALITY, TILE, cores
from benchmarks.conversion.datasets import (
    ensure_dataset,
    ground_truth,
    output_tiles,
    run_root,
    single_slide,
)
from benchmarks.conversion.measuring import (
    Proc,
    ensure_orthanc,
    openslide_library,
    run_child,
    run_measured,
    tool,
)
from benchmarks.conversion.outputs import (
    TruthRegions,
    base_size,
    dciodvfy_errors,
    dicom_files,
)
from benchmarks.conversion.profiling import summarise_profile
from benchmarks.conversion.report import source_state


@dataclass
class Sample:
    wall: float
    max_rss_mb: float
    cpu: float
    out_bytes: int = 0
    base: tuple[int, int] = (0, 0)
    inner: float | None = None


@dataclass
class VariantStats:
    key: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ""
    failures: list[str] = field(default_factory=list)
    errors: tuple[int, int, list[str]] | None = None
    files: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, attr: str) -> float:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache = (PROJECT_ROOT / args.cache).resolve()
        self.scratch = self.cache / "runs"
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self.logs = self.cache / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workers = args.workers or cores()
        self.data_root = ensure_dataset(self.cache, args.size, args.seed, 1)
        self.slide_id, self.mrxs = single_slide(self.data_root)
        import openslide

        with openslide.OpenSlide(str(self.mrxs)) as slide:
            props = dict(slide.properties)
            self.levels = slide.level_count
        self.bounds = (
            int(props.get("openslide.bounds-width", props["openslide.level[0].width"])),
            int(props.get("openslide.bounds-height", props["openslide.level[0].height"])),
        )
        self.tiles = output_tiles(*self.bounds, self.levels)
        self.truth = ground_truth(args.size, args.seed, self.mrxs)
        if tuple(self.truth.bounds[2:]) != self.bounds:
            raise SystemExit(f"ground truth bounds {self.truth.bounds} != OpenSlide {self.bounds}")
        self.source_before = source_state()
        self.stats = {key: VariantStats(key) for key in args.variants}
        self.dagster_home = self.cache / "instance"
        shutil.rmtree(self.dagster_home, ignore_errors=True)
        # Every child_dagster (A, F-I, the overhead and the profile) loads this instance.
        init = run_child(
            "init_instance",
            {"dagster_home": str(self.dagster_home), "slide_id": self.slide_id},
            self.logs / "init-instance.log",
        )
        if not init.ok:
            raise SystemExit(
                f"could not create the Dagster instance, see {self.logs / 'init-instance.log'}"
            )
        self.psnr = TruthRegions(self.truth, args.psnr_regions)
        self.orthanc: str | None = None
        if "E" in self.stats:
            self.orthanc, why = ensure_orthanc(not args.no_install)
            if self.orthanc is None:
                self.stats["E"].skipped = why
                print(f"E skipped: {why}", flush=True)

    # One run of one variant -------------------------------------------------------------
    def run_variant(self, key: str, run: int) -> None:
        stats = self.stats[key]
        if stats.skipped:
            return
        log = self.logs / f"{key}-run{run}.log"
        out_dir: Path | None = None
        root: Path | None = None
        if key in "AFGHI":
            root = run_root(self.data_root, self.scratch)
            proc = run_child(
                "dagster",
                {
                    "data_root": str(root),
                    "slide_id": self.slide_id,
                    "workers": self.workers,
                    "dagster_home": str(self.dagster_home),
                    "regenerate": key == "F",
                    "stock_source": key == "G",
                    "openslide_reads": key in "HI",
                    "default_cache": key == "H",
                },
                log,
            )
            out_dir = root / "out" / "dicom" / self.slide_id / "sm"
        elif key == "B":
            out_dir = Path(tempfile.mkdtemp(prefix="B-", dir=self.scratch)) / "out"
            proc = run_child("api", {"mrxs": str(self.mrxs), "out": str(out_dir)}, log)
        elif key == "C":
            out_dir = Path(tempfile.mkdtemp(prefix="C-", dir=self.scratch)) / "out"
            exe = tool("wsidicomizer")
            assert exe, "the wsidicomizer CLI is not installed"
            proc = run_measured(
                [exe, "-i", str(self.mrxs), "-o", str(out_dir), "--no-label"],
                log,
            )
        elif key == "D":
            proc = run_child(
                "codec",
                {
                    "mrxs": str(self.mrxs),
                    "levels": self.levels,
                    "tiles": self.tiles,
                    "workers": self.workers,
                },
                log,
            )
        elif key == "E":
            out_dir = Path(tempfile.mkdtemp(prefix="E-", dir=self.scratch)) / "out"
            out_dir.mkdir()
            assert self.orthanc
            proc = run_measured(
                [
                    self.orthanc,
                    f"--openslide={openslide_library()}",
                    str(self.mrxs),
                    f"--folder={out_dir}",
                    f"--threads={self.workers}",
                    f"--tile-width={TILE}",
                    f"--tile-height={TILE}",
                    "--compression=jpeg",
                    f"--jpeg-quality={QUALITY}",
                    "--max-size=0",
                ],
                log,
            )
        else:
            raise ValueError(key)
        if not proc.ok:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            stats.failures.append(f"run {run}: exit {proc.returncode}: {' | '.join(tail)}")
            print(f"  {key} run {run} FAILED (exit {proc.returncode}), see {log}", flush=True)
            if key == "E" and not stats.samples and run == 0:
                stats.skipped = f"OrthancWSIDicomizer failed: {' | '.join(tail)}"
            if proc.returncode == 3 and key in "FGHI":
                stats.skipped = " | ".join(tail)
            self._cleanup(out_dir, root)
            return
        sample = Sample(
            proc.wall, proc.max_rss_mb, proc.user + proc.sys, inner=proc.result.get("inner_seconds")
        )
        if key == "D":
            sample.out_bytes = int(proc.result["encoded_bytes"])
            sample.base = self.bounds
            stats.extra = proc.result
        else:
            assert out_dir is not None
            files = dicom_files(out_dir)
            sample.out_bytes = sum(p.stat().st_size for p in files)
            sample.base = base_size(files)
            stats.files = len(files)
            if key in "AFGHI":
                stats.extra.setdefault("job_seconds", []).append(proc.result.get("job_seconds"))
                stats.extra.setdefault("setup_seconds", []).append(proc.result.get("setup_seconds"))
                stats.extra["steps"] = proc.result.get("steps")
            if stats.errors is None and not self.args.no_validate:
                print(f"  dciodvfy on {len(files)} {key} files ...", flush=True)
                stats.errors = dciodvfy_errors(files)
            if key in "ACFGHI" and "psnr" not in stats.extra and self.args.psnr_regions > 0:
                print(f"  level-0 PSNR of {key} against the ground truth ...", flush=True)
                stats.extra["psnr"] = self.psnr.measure(out_dir)
        stats.samples.append(sample)
        print(
            f"  {key} run {run}: {sample.wall:6.1f} s wall, {sample.max_rss_mb:6.0f} MiB peak RSS, "
            f"cpu {sample.cpu:6.1f} s, {sample.out_bytes / MIB:7.1f} MiB out",
            flush=True,
        )
        self._cleanup(out_dir, root)

    def _cleanup(self, out_dir: Path | None, root: Path | None) -> None:
        if self.args.keep:
            return
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        elif out_dir is not None:
            shutil.rmtree(out_dir.parent, ignore_errors=True)

    def run_all(self) -> None:
        keys = list(self.stats)
        for run in range(self.args.runs):
            order = keys[run % len(keys) :] + keys[: run % len(keys)]
            print(f"run {run + 1}/{self.args.runs}: {' '.join(order)}", flush=True)
            for key in order:
                self.run_variant(key, run)

    # Dagster overhead ---------------------------------------------------------------------
    def overhead(self) -> dict[str, Any]:
        small = ensure_dataset(self.cache, "small", self.args.seed, 1)
        slide_id, _ = single_slide(small)
        asset: list[Proc] = []
        bare: list[Proc] = []
        for run in range(self.args.overhead_runs):
            order = ("asset", "bare") if run % 2 == 0 else ("bare", "asset")
            for what in order:
                root = run_root(small, self.scratch)
                spec = {
                    "data_root": str(root),
                    "slide_id": slide_id,
                    "workers": self.workers,
                    "dagster_home": str(self.dagster_home),
                }
                log = self.logs / f"overhead-{what}-run{run}.log"
                proc = run_child("dagster" if what == "asset" else "convert_slide", spec, log)
                if not proc.ok:
                    raise SystemExit(f"overhead run failed, see {log}")
                (asset if what == "asset" else bare).append(proc)
                shutil.rmtree(root, ignore_errors=True)
        imports: dict[str, list[float]] = {}
        modules = ("dagster", "wsidicomizer", "bms_pipeline.definitions")
        for run in range(self.args.overhead_runs):
            for module in modules[run % 3 :] + modules[: run % 3]:
                log = self.logs / f"import-{module}-run{run}.log"
                proc = run_measured([sys.executable, "-c", f"import {module}"], log)
                imports.setdefault(module, []).append(proc.wall)
        med = statistics.median
        return {
            "imports": {m: med(v) for m, v in imports.items()},
            "runs": self.args.overhead_runs,
            "slide_px": base_size_of_small(small, slide_id),
            "asset_job": med(p.result["job_seconds"] for p in asset),
            "asset_inner": med(p.result["inner_seconds"] for p in asset),
            "asset_wall": med(p.wall for p in asset),
            "bare_call": med(p.result["call_seconds"] for p in bare),
            "bare_inner": med(p.result["inner_seconds"] for p in bare),
            "bare_wall": med(p.wall for p in bare),
            "asset_rss": med(p.max_rss_mb for p in asset),
            "bare_rss": med(p.max_rss_mb for p in bare),
        }

    # Backfill -----------------------------------------------------------------------------
    def backfill(self) -> dict[str, Any]:
        n = self.args.backfill_slides
        source = ensure_dataset(self.cache, "small", self.args.seed, n)
        exe = tool("bms-pipeline")
        assert exe, "the bms-pipeline CLI is not installed"
        results: dict[int, list[Proc]] = {2: [], 1: []}
        for run in range(self.args.backfill_runs):
            for jobs in (2, 1) if run % 2 == 0 else (1, 2):
                root = Path(tempfile.mkdtemp(prefix=f"backfill-j{jobs}-", dir=self.scratch))
                shutil.copytree(source / "raw", root / "raw")
                shutil.copy2(source / "collection.yaml", root / "collection.yaml")
                log = self.logs / f"backfill-jobs{jobs}-run{run}.log"
                proc = run_measured(
                    [exe, "run", "--data-root", str(root), "--jobs", str(jobs)], log
                )
                results[jobs].append(proc)
                print(
                    f"  backfill --jobs {jobs} run {run}: {proc.wall:.1f} s, "
                    f"cpu {proc.user + proc.sys:.1f} s, exit {proc.returncode}",
                    flush=True,
                )
                shutil.rmtree(root, ignore_errors=True)
        med = statistics.median
        out: dict[str, Any] = {"slides": n, "runs": self.args.backfill_runs}
        out["steps"] = {
            jobs: step_seconds(procs[-1].log) for jobs, procs in results.items() if procs
        }
        for jobs, procs in results.items():
            out[jobs] = {  # pyright: ignore[reportArgumentType]
                "wall": med(p.wall for p in procs),
                "cpu": med(p.user + p.sys for p in procs),
                "use": med((p.user + p.sys) / p.wall / cores() for p in procs),
                "rss": med(p.max_rss_mb for p in procs),
                "exit": sorted({p.returncode for p in procs}),
            }
        return out

    # Stage costs --------------------------------------------------------------------------
    def stages(self) -> dict[str, Any]:
        log = self.logs / "stages.log"
        proc = run_child(
            "stages",
            {
                "mrxs": str(self.mrxs),
                "bounds": list(self.bounds),
                "levels": self.levels,
                "rows": self.args.stage_rows,
            },
            log,
        )
        if not proc.ok:
            return {"skipped": f"stage timing failed, see {log}"}
        return proc.result

    # Profile ------------------------------------------------------------------------------
    def profile(self) -> dict[str, Any]:
        py_spy = self.args.py_spy or shutil.which("py-spy")
        if not py_spy:
            return {"skipped": "py-spy not found (run with `uv run --with py-spy ...`)"}
        out: dict[str, Any] = {}
        for key in ("B", "A"):
            raw = self.logs / f"profile-{key}.txt"
            # Not --native: py-spy then drops most samples of threads that run GIL-free C code
            # (libjpeg-turbo, OpenSlide), so native frames would under-count exactly those.
            # Without it, time in C is charged to the Python frame that called it.
            wrapper = [
                py_spy,
                "record",
                "--rate",
                str(self.args.profile_rate),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
            ]
            log = self.logs / f"profile-{key}.log"
            root: Path | None = None
            if key == "B":
                out_dir = Path(tempfile.mkdtemp(prefix="prof-", dir=self.scratch)) / "out"
                proc = run_child("api", {"mrxs": str(self.mrxs), "out": str(out_dir)}, log, wrapper)
                shutil.rmtree(out_dir.parent, ignore_errors=True)
            else:
                root = run_root(self.data_root, self.scratch)
                proc = run_child(
                    "dagster",
                    {
                        "data_root": str(root),
                        "slide_id": self.slide_id,
                        "workers": self.workers,
                        "dagster_home": str(self.dagster_home),
                    },
                    log,
                    wrapper,
                )
                shutil.rmtree(root, ignore_errors=True)
            if not proc.ok or not raw.exists():
                out[key] = {"skipped": f"py-spy run failed, see {log}"}
                continue
            summary = summarise_profile(raw)
            summary["wall"] = proc.wall
            summary["raw"] = (
                str(raw.relative_to(PROJECT_ROOT)) if raw.is_relative_to(PROJECT_ROOT) else str(raw)
            )
            out[key] = summary
        return out


def step_seconds(log: Path) -> dict[str, tuple[float, int]]:
    """Total seconds and count per Dagster step, from the STEP_SUCCESS lines of a run log."""
    import re

    pattern = re.compile(
        r' - ([\w]+) - STEP_SUCCESS - Finished execution of step "[^"]*" in ([\d.]+)(ms|s|m)\b'
    )
    totals: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            value = float(match.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(3)]
            entry = totals.setdefault(match.group(1), [0.0, 0])
            entry[0] += value
            entry[1] += 1
    return {k: (v[0], int(v[1])) for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])}


def base_size_of_small(root: Path, slide_id: str) -> tuple[int, int]:
    import openslide

    with openslide.OpenSlide(str(root / "raw" / "slides" / f"{slide_id}.mrxs")) as slide:
        p = slide.properties
        return (
            int(p.get("openslide.bounds-width", p["openslide.level[0].width"])),
            int(p.get("openslide.bounds-height", p["openslide.level[0].height"])),
        )
