"""The square `large` slide and a slide as wide as the real BMDeep ones, side by side (issue 17).

    python3.12 -m uv run python -m benchmarks.bench_width --runs 2

On each slide, alternating variant by variant in one run (the machine is shared, so every
comparison is a ratio of runs made in the same minutes):

* **ours-idc**: `convert_layout_slide` (as `sm_series` converts: IDC metadata, header
  normalisation, publication gate) at today's default settings, which are IDC's (1024 px,
  levels 0, 2, 4, ... that exist, THUMBNAIL from the pyramid, OVERVIEW);
* **ours-512**: the same at the old settings (512 px, every level);
* **orthanc-1024** / **orthanc-512**: OrthancWSIDicomizer 1.1 through OpenSlide at its
  defaults but for the tile size and quality (`--threads` = cores, q80);
* **cli**: the `wsidicomizer` CLI at 1024 px (`--no-label`, its defaults otherwise);
* **codec**: libjpeg-turbo decode of every stored JPEG of the levels ours-idc reads plus
  encode of as many 1024 px tiles as it writes, a thread per core;
* **job**: `bms-pipeline run --force` on the slide (conversion, annotations, validation,
  tables, checks, Dagster), whose conversion time is read from its own log line.

Each variant runs in a fresh process started by a small runner (wall time around it, peak
RSS and CPU from `os.wait4`). `--profile` samples one ours-idc run per slide with py-spy.
dciodvfy runs untimed on the first output of each ours-* and orthanc-* variant; level-0
PSNR of ours-idc against the generator's ground truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_conversion import (
    TruthRegions,
    base_size,
    cores,
    dciodvfy_errors,
    dicom_files,
    ensure_dataset,
    ensure_orthanc,
    ground_truth,
    level_records,
    openslide_library,
    run_measured,
    run_root,
    single_slide,
    summarise_profile,
    tool,
)

MODULE = "benchmarks.bench_width"
QUALITY = 80
VARIANTS = ("ours-idc", "ours-512", "orthanc-1024", "orthanc-512", "cli", "codec", "job")
OPTIONAL = ("before-idc", "before-job")  # with --before: ours-idc / job on another checkout
SLIDES = ("large", "wide")


# --------------------------------------------------------------------------- children


def child_ours(spec: dict[str, Any]) -> None:
    """One `convert_layout_slide`, with the phases after wsidicomizer timed apart."""
    import bms_pipeline.core.dicom.convert as convert_module
    from bms_pipeline.core.collection import CollectionConfig
    from bms_pipeline.core.dicom.convert import ConversionSettings
    from bms_pipeline.core.dicom.idc_conversion import convert_layout_slide
    from bms_pipeline.core.dicom.publication import PublicationGate
    from bms_pipeline.core.layout import DataLayout

    phases: dict[str, float] = {"normalize_s": 0.0, "gate_s": 0.0}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - started

        return wrapper

    # Timers only: the functions themselves run unchanged.
    convert_module.normalize_series = timed("normalize_s", convert_module.normalize_series)
    PublicationGate.sm_problems = timed("gate_s", PublicationGate.sm_problems)

    if spec.get("cap_mib"):
        from bms_pipeline.core.dicom import fast_source

        fast_source.CACHE_CAP_BYTES = int(spec["cap_mib"]) << 20
    layout = DataLayout.at(spec["root"], spec["out"])
    collection = CollectionConfig.load(layout.collection_yaml)
    settings = ConversionSettings.for_collection(collection.conventions.sm)
    if spec["settings"] == "512":
        settings = ConversionSettings.for_collection(
            collection.conventions.sm, tile_size=512, include_levels=None
        )
    started = time.perf_counter()
    result = convert_layout_slide(layout, collection, spec["slide_id"], settings)
    total = time.perf_counter() - started
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "total_s": total,
                "wsidicomizer_s": result.seconds,
                **phases,
                "files": len(result.files),
                "bytes": result.total_bytes,
                "base": [result.base_width, result.base_height],
            }
        )
    )


def child_codec(spec: dict[str, Any]) -> None:
    """Decode every stored source JPEG of `levels` and encode `tiles` tiles of `tile` px."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from imagecodecs import JPEG8, jpeg8_decode, jpeg8_encode

    datafiles, records = level_records(Path(spec["mrxs"]))
    flat = [r for level in spec["levels"] if level in records for r in records[level]]
    fds = [os.open(p, os.O_RDONLY) for p in datafiles]
    tile = spec["tile"]
    batches = [flat[i : i + 64] for i in range(0, len(flat), 64)]
    quotas = [
        round((i + 1) * spec["tiles"] / len(batches)) - round(i * spec["tiles"] / len(batches))
        for i in range(len(batches))
    ]

    def work(items: list[tuple[int, int, int]], quota: int) -> int:
        decoded = [jpeg8_decode(os.pread(fds[f], n, at)) for f, at, n in items]
        canvas = np.zeros((tile, tile, 3), dtype=np.uint8)
        for k in range(quota):
            image = decoded[k % len(decoded)]
            h, w = min(tile, image.shape[0]), min(tile, image.shape[1])
            canvas[:h, :w] = image[:h, :w]
            canvas[h:, :] = canvas[:1, :] if h else 0
            jpeg8_encode(canvas, level=QUALITY, subsampling="422", outcolorspace=JPEG8.CS.YCbCr)
        return len(items)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        decoded = sum(pool.map(work, batches, quotas))
    Path(spec["result"]).write_text(
        json.dumps({"inner_s": time.perf_counter() - started, "decoded": decoded})
    )


def run_child(
    kind: str,
    spec: dict[str, Any],
    log: Path,
    wrapper: list[str] | None = None,
    cwd: Path | None = None,
):
    result = log.with_suffix(".json").resolve()
    spec = dict(spec, result=str(result))
    cmd = [*(wrapper or []), sys.executable, "-m", MODULE, "_child", kind, json.dumps(spec)]
    proc = run_measured(cmd, log.resolve(), cwd=cwd) if cwd else run_measured(cmd, log)
    if proc.ok and result.exists():
        proc.result = json.loads(result.read_text(encoding="utf-8"))
    return proc


# --------------------------------------------------------------------------- one slide


class SlideBench:
    def __init__(self, size: str, args: argparse.Namespace) -> None:
        self.size = size
        self.args = args
        # A name (`large`, `wide`) is a demo dataset generated and cached here; a path is a
        # data root written elsewhere (`demo-data --width W --height H`, or a real slide), so
        # the benchmark can be rerun on a slide it did not generate (no PSNR then: the ground
        # truth is replayed from the generator's size and seed).
        given = Path(size)
        self.external = "/" in size
        if self.external:
            self.root = given.resolve()
            # `demo-data --data-root <name>/data` roots are all called `data`: the parent
            # tells them apart in the report and keeps their logs apart.
            self.size = self.root.parent.name if self.root.name == "data" else self.root.name
        else:
            self.root = ensure_dataset(Path(args.cache).resolve(), size, 0, 1)
        self.slide_id, self.mrxs = single_slide(self.root)
        Path(args.cache).mkdir(parents=True, exist_ok=True)
        self.scratch = Path(
            tempfile.mkdtemp(prefix=f"width-{self.size}-", dir=args.cache)
        ).resolve()
        self.logs = Path(args.cache) / "logs" / f"width-{self.size}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.samples: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        self.extra: dict[str, Any] = {}
        self.orthanc: str | None = None
        if any(v.startswith("orthanc") for v in args.variants):
            self.orthanc, why = ensure_orthanc(install=False)
            if self.orthanc is None:
                print(f"  orthanc skipped: {why}")
        self.levels = self._levels()

    def _levels(self) -> dict[str, Any]:
        import openslide

        from bms_pipeline.core.collection import CollectionConfig
        from bms_pipeline.core.dicom.convert import ConversionSettings

        collection = CollectionConfig.load(self.root / "collection.yaml")
        settings = ConversionSettings.for_collection(collection.conventions.sm)
        present = settings.present_levels(self.mrxs) or []
        with openslide.OpenSlide(str(self.mrxs)) as slide:
            w = int(slide.properties["openslide.bounds-width"])
            h = int(slide.properties["openslide.bounds-height"])
            count = slide.level_count
        tiles = sum(-(-(w >> k) // 1024) * -(-(h >> k) // 1024) for k in present)
        return {"present": present, "count": count, "bounds": (w, h), "tiles_1024": tiles}

    def run(self, variant: str, index: int) -> None:
        out = self.scratch / f"{variant}-{index}"
        log = self.logs / f"{variant}-{index}.log"
        sample: dict[str, Any] = {}
        if variant in ("ours-idc", "ours-512", "before-idc") or variant.startswith("ours-cap"):
            root = run_root(self.root, self.scratch)
            spec = {
                "root": str(root),
                "out": str(out),
                "slide_id": self.slide_id,
                "settings": "512" if variant == "ours-512" else "idc",
            }
            if variant.startswith("ours-cap"):
                spec["cap_mib"] = int(variant.removeprefix("ours-cap"))  # pyright: ignore[reportArgumentType]
            cwd = None
            if variant == "before-idc":
                # The other checkout's bms_pipeline (`python -m` puts the working folder
                # first on sys.path), this benchmark's child copied in.
                cwd = Path(self.args.before).resolve()
                here = Path(__file__)
                shutil.copy2(here, cwd / "bms_pipeline_tests" / "benchmarks" / here.name)
            proc = run_child("ours", spec, log, cwd=cwd)
            sample.update(proc.result)
            files = dicom_files(out / "dicom")
        elif variant.startswith("orthanc"):
            if self.orthanc is None:
                return
            tile = int(variant.split("-")[1])
            out.mkdir(parents=True)
            proc = run_measured(
                [
                    self.orthanc,
                    f"--openslide={openslide_library()}",
                    str(self.mrxs),
                    f"--folder={out}",
                    f"--threads={cores()}",
                    f"--tile-width={tile}",
                    f"--tile-height={tile}",
                    "--compression=jpeg",
                    f"--jpeg-quality={QUALITY}",
                    "--max-size=0",
                ],
                log,
            )
            files = dicom_files(out)
        elif variant == "cli":
            exe = tool("wsidicomizer")
            assert exe, "wsidicomizer CLI not found"
            proc = run_measured(
                [exe, "-i", str(self.mrxs), "-o", str(out), "--no-label", "--tile-size", "1024"],
                log,
            )
            files = dicom_files(out)
        elif variant == "codec":
            spec = {
                "mrxs": str(self.mrxs),
                "levels": self.levels["present"],
                "tile": 1024,
                "tiles": self.levels["tiles_1024"],
                "workers": cores(),
            }
            proc = run_child("codec", spec, log)
            sample.update(proc.result)
            files = []
        elif variant in ("job", "before-job"):
            root = run_root(self.root, self.scratch)
            command = [sys.executable, "-m", "bms_pipeline.cli", "run"]
            # before-job: the other checkout's bms_pipeline (`python -m` puts the working
            # folder first on sys.path), same interpreter and packages.
            cwd = Path(self.args.before).resolve() if variant == "before-job" else Path.cwd()
            began = time.time()
            proc = run_measured(
                [*command, "--data-root", str(root), "--force"], log.resolve(), cwd=cwd
            )
            ended = time.time()
            sample["conversion_s"] = conversion_seconds(log, self.slide_id)
            if proc.returncode == 0:
                sample.update(job_phases(root / ".dagster", began, ended))
            files = []
        else:
            raise ValueError(variant)
        sample.update(
            wall=proc.wall, cpu=proc.user + proc.sys, rss=proc.max_rss_mb, rc=proc.returncode
        )
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            print(f"  {variant} FAILED ({proc.returncode}): {' | '.join(tail)}", flush=True)
        elif files:
            sample["base"] = list(base_size(files))
            sample["mb"] = sum(f.stat().st_size for f in files) / 1e6
            if index == 0 and not self.args.no_validate:
                sample["dciodvfy"] = dciodvfy_errors(files)[:2]
            if (
                index == 0
                and variant == "ours-idc"
                and self.args.psnr_regions
                and not self.external
            ):
                truth = ground_truth(self.size, 0, self.mrxs)
                regions = TruthRegions(truth, self.args.psnr_regions)
                (sm,) = (out / "dicom").glob("*/sm")
                sample["psnr"] = regions.measure(sm)
        self.samples[variant].append(sample)
        print(
            f"  {self.size} {variant} #{index + 1}: {proc.wall:.1f} s, CPU {proc.user + proc.sys:.1f} s, "
            f"{proc.max_rss_mb:.0f} MiB",
            flush=True,
        )
        if not self.args.keep:
            shutil.rmtree(out, ignore_errors=True)

    def profile(self) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            print("  py-spy not found (run with `uv run --with py-spy`): no profile")
            return
        raw = self.logs / "profile-ours-idc.txt"
        root = run_root(self.root, self.scratch)
        spec = {
            "root": str(root),
            "out": str(self.scratch / "profile"),
            "slide_id": self.slide_id,
            "settings": "idc",
        }
        wrapper = [
            py_spy,
            "record",
            "--rate",
            "100",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
        ]
        proc = run_child("ours", spec, self.logs / "profile-ours-idc.log", wrapper)
        if proc.ok and raw.exists():
            self.extra["profile"] = summarise_profile(raw)
            self.extra["profile_wall"] = proc.wall


def step_windows(home: Path) -> dict[str, tuple[float, float]]:
    """Each step's (start, end) wall-clock time, from the step events in the instance at
    `home` (every run of it)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    starts: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}
    for run in instance.get_runs():
        for record in instance.get_records_for_run(run.run_id, limit=100_000).records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = entry.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                start = starts.get(event.step_key, entry.timestamp)
                windows[event.step_key] = (start, entry.timestamp)
    return windows


def job_phases(home: Path, began: float, ended: float) -> dict[str, float]:
    """Where a `run --force` spent its wall time, from the step events in its instance
    (read after the run, untimed): before the `sm_series` step starts (interpreter, imports,
    instance, planning, inventory), the `sm_series` step (its imports, the conversion, the
    publication gate, publishing), and after it (checks, annotations, validation, the
    collection job, the summary), with every other step's own duration."""
    windows = step_windows(home)
    if "sm_series" not in windows:
        return {}
    start, end = windows["sm_series"]
    return {
        "before_sm_s": start - began,
        "sm_step_s": end - start,
        "after_sm_s": ended - end,
        **{f"step:{k}": round(b - a, 3) for k, (a, b) in windows.items()},
    }


def conversion_seconds(log: Path, slide_id: str) -> float | None:
    """The conversion's own time (`convert_slide`'s timer) from the summary table that
    `bms-pipeline run` prints: slide, result, instances, levels, seconds, MP/s."""
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] == slide_id and parts[1] == "ok":
            try:
                return float(parts[4])
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- report


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and r.get("rc", 0) == 0]
    return statistics.median(values) if values else None


def report(benches: list[SlideBench], args: argparse.Namespace) -> str:
    lines = [
        "| slide | variant | wall s | conversion s | s/GP | CPU s | peak RSS MiB | MB | dciodvfy errors | wall / orthanc-1024 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bench in benches:
        w, h = bench.levels["bounds"]
        gp = w * h / 1e9
        orthanc = med(bench.samples.get("orthanc-1024", []), "wall")
        for variant in args.variants:
            rows = bench.samples[variant]
            wall = med(rows, "wall")
            if wall is None:
                continue
            conv = med(rows, "wsidicomizer_s") or med(rows, "conversion_s") or med(rows, "inner_s")
            dcio = next((r["dciodvfy"] for r in rows if "dciodvfy" in r), None)
            ratio = f"{wall / orthanc:.2f}" if orthanc else "n/a"
            lines.append(
                f"| {bench.size} ({w:,} x {h:,}, {gp:.2f} GP) | {variant} | {wall:.1f} | "
                f"{conv:.1f} |"
                if conv
                else f"| {bench.size} ({w:,} x {h:,}, {gp:.2f} GP) | {variant} | {wall:.1f} | |"
            )
            lines[-1] += (
                f" {wall / gp:.1f} | {med(rows, 'cpu'):.1f} | {max(r['rss'] for r in rows):.0f} | "
                f"{(med(rows, 'mb') or 0):.0f} | {dcio[0] if dcio else 'n/a'} | {ratio} |"
            )
    out = ["\n".join(lines), ""]
    for bench in benches:
        for variant in [v for v in args.variants if v.startswith(("ours", "before"))]:
            rows = bench.samples.get(variant, [])
            if rows and med(rows, "total_s"):
                out.append(
                    f"- {bench.size} {variant}: `convert_layout_slide` {med(rows, 'total_s'):.1f} s, of which "
                    f"wsidicomizer {med(rows, 'wsidicomizer_s'):.1f} s, header normalisation "
                    f"{med(rows, 'normalize_s'):.2f} s, publication gate {med(rows, 'gate_s'):.2f} s; "
                    f"all walls: {', '.join(f'{r["wall"]:.1f}' for r in rows)}"
                )
            psnr = next((r["psnr"] for r in rows if "psnr" in r), None)
            if psnr:
                out.append(
                    f"- {bench.size} {variant} level-0 PSNR {psnr['dicom']:.2f} dB "
                    f"(source ceiling {psnr['source']:.2f} dB, {psnr['regions']} regions)"
                )
        for variant in ("orthanc-1024", "orthanc-512", "cli", "codec", "job", "before-job"):
            rows = bench.samples.get(variant, [])
            if rows:
                out.append(
                    f"- {bench.size} {variant} walls: {', '.join(f'{r["wall"]:.1f}' for r in rows)}"
                )
        for name in ("before-job", "job"):
            job = bench.samples.get(name, [])
            if not (job and med(job, "conversion_s")):
                continue
            conv, wall = med(job, "conversion_s"), med(job, "wall")
            assert conv is not None and wall is not None
            out.append(
                f"- {bench.size} {name}: conversion {conv:.1f} s inside a {wall:.1f} s run: "
                f"everything else {wall - conv:.1f} s = {(wall - conv) / conv:.0%} of the conversion"
            )
            after = med(job, "after_sm_s")
            if after is not None:
                sm_step = med(job, "sm_step_s") or 0.0
                out.append(
                    f"- {bench.size} {name} phases (median): before the sm_series step "
                    f"{med(job, 'before_sm_s'):.1f} s, the sm_series step {sm_step:.1f} s "
                    f"(conversion {conv:.1f} s, the rest of the step {sm_step - conv:.1f} s), "
                    f"after it {after:.1f} s = {after / conv:.0%} of the conversion; steps: "
                    + ", ".join(
                        f"{k.removeprefix('step:')} {med(job, k):.2f}"
                        for k in sorted({k for r in job for k in r if k.startswith("step:")})
                        if k != "step:sm_series"
                    )
                )
        out.append(
            f"- {bench.size}: levels {bench.levels['count']}, IDC levels written "
            f"{bench.levels['present']}, {bench.levels['tiles_1024']:,} tiles of 1024 px"
        )
        if "profile" in bench.extra:
            out.append(
                f"\nProfile of {bench.size} ours-idc ({bench.extra['profile_wall']:.1f} s under py-spy):\n"
            )
            out.append(json.dumps(bench.extra["profile"], indent=1)[:6000])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        {"ours": child_ours, "codec": child_codec}[argv[1]](json.loads(argv[2]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--slides",
        default=",".join(SLIDES),
        help="comma-separated: large, wide (generated and cached) or paths of data roots",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cache", default=".bench")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--psnr-regions", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--before", help="a checkout of the project to run as before-idc")
    parser.add_argument(
        "--cli-every-run", action="store_true", help="else the CLI runs once per slide"
    )
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.before and not any(v.startswith("before-") for v in args.variants):
        args.variants.insert(1, "before-idc")
    benches = [SlideBench(size, args) for size in args.slides.split(",")]
    for run in range(args.runs):
        order = args.variants if run % 2 == 0 else list(reversed(args.variants))
        for bench in benches:
            for variant in order:
                if variant == "cli" and run > 0 and args.runs > 1 and not args.cli_every_run:
                    continue
                bench.run(variant, run)
    if args.profile:
        for bench in benches:
            bench.profile()
    text = report(benches, args)
    print(text)
    (Path(args.cache) / "logs" / "width-report.md").write_text(text)
    for bench in benches:
        (Path(args.cache) / "logs" / f"width-{bench.size}.json").write_text(
            json.dumps({"samples": bench.samples, "levels": bench.levels}, default=str, indent=1)
        )
        shutil.rmtree(bench.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
