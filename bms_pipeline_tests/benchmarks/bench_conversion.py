"""Benchmark: MIRAX to DICOM conversion against its anchors (issue 7).

Run from the project root with::

    uv run --with py-spy python -m bms_pipeline_tests.benchmarks.bench_conversion --runs 3 --profile

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
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODULE = "bms_pipeline_tests.benchmarks.bench_conversion"
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


# --------------------------------------------------------------------------- datasets


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


# --------------------------------------------------------------------------- MIRAX index


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


# --------------------------------------------------------------------------- children


def _write_result(path: str, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload), encoding="utf-8")


def patch_converter(
    stock_source: bool, regenerate: bool, openslide_reads: bool = False, default_cache: bool = False
) -> str:
    """Levers tried by variants F, G, H and I, patched into this child process only.

    `stock_source`: make `convert_slide` read through wsidicomizer's own `OpenSlideSource`
    instead of the project's `FastOpenSlideSource`. `regenerate`: force
    `regenerate_pyramid=True` on every `WsiDicomizer.convert` call. `openslide_reads`: use
    `OpenSlideReadSource` (no direct MIRAX reader); `default_cache`: give OpenSlide its
    default 32 MiB cache instead of one sized for a tile row. Returns "" or why the patch
    cannot apply to this tree.
    """
    if openslide_reads or default_cache:
        from bms_pipeline.core.dicom import convert, fast_source

        if not hasattr(fast_source, "OpenSlideReadSource"):
            return "this tree has no OpenSlideReadSource (no direct MIRAX reader to turn off)"
        if openslide_reads:
            convert.FastOpenSlideSource = fast_source.OpenSlideReadSource  # type: ignore[misc]
        if default_cache:
            fast_source.decoded_image_cache_bytes = lambda *args, **kwargs: 32 << 20
    if stock_source:
        from wsidicomizer.extras.openslide import OpenSlideSource

        from bms_pipeline.core.dicom import convert

        if not hasattr(convert, "FastOpenSlideSource"):
            return "convert_slide has no FastOpenSlideSource to swap for the stock source"
        convert.FastOpenSlideSource = OpenSlideSource  # type: ignore[attr-defined,misc]
    if regenerate:
        from wsidicomizer import WsiDicomizer

        original = WsiDicomizer.convert.__func__  # type: ignore[attr-defined]

        def convert_regenerating(cls, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
            kwargs["regenerate_pyramid"] = True
            return original(cls, *args, **kwargs)

        WsiDicomizer.convert = classmethod(convert_regenerating)  # type: ignore[method-assign,assignment]
    return ""


def child_dagster(spec: dict[str, Any]) -> None:
    """A: materialize sm_series (without its checks) through Dagster in this process.
    F-I: the same with one lever patched in (see `patch_converter`)."""
    started = time.perf_counter()
    import dagster as dg

    why = patch_converter(
        spec.get("stock_source", False),
        spec.get("regenerate", False),
        spec.get("openslide_reads", False),
        spec.get("default_cache", False),
    )
    if why:
        print(why, file=sys.stderr)
        raise SystemExit(3)

    from bms_pipeline.definitions import build_definitions
    from bms_pipeline.operations import register_slides

    defs = build_definitions(spec["data_root"], workers=spec["workers"])
    job = defs.resolve_job_def("slides_job").get_subset(
        asset_selection={dg.AssetKey("sm_series")}, asset_check_selection=set()
    )
    # The persistent instance a deployment's run worker loads (prepared by `init_instance`,
    # untimed): creating an ephemeral one would add seconds of SQLite schema migrations
    # that no real run pays.
    os.environ["DAGSTER_HOME"] = spec["dagster_home"]
    with dg.DagsterInstance.get() as instance:
        register_slides(instance, [spec["slide_id"]])
        job_started = time.perf_counter()
        result = job.execute_in_process(partition_key=spec["slide_id"], instance=instance)
        job_seconds = time.perf_counter() - job_started
        steps = sorted(e.step_key for e in result.all_events if e.is_step_success)
    (mat,) = result.asset_materializations_for_node("sm_series")
    meta = {k: v.value for k, v in mat.metadata.items()}
    _write_result(
        spec["result"],
        {
            "job_seconds": job_seconds,
            "inner_seconds": float(meta["seconds"]),
            "setup_seconds": job_started - started,
            "steps": steps,
        },
    )


def child_init_instance(spec: dict[str, Any]) -> None:
    """Create the persistent Dagster instance the A-like children load (storage migrated)."""
    import dagster as dg

    from bms_pipeline.instance import ensure_instance_home
    from bms_pipeline.operations import register_slides

    home = Path(spec["dagster_home"])
    ensure_instance_home(home)
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        register_slides(instance, [spec["slide_id"]])
        instance.get_runs(limit=1)
        instance.get_asset_records()
    _write_result(spec["result"], {})


def child_wsidicomizer_api(spec: dict[str, Any]) -> None:
    """B: the bare wsidicomizer API with default settings (no label, like A)."""
    from wsidicomizer import WsiDicomizer

    started = time.perf_counter()
    files = WsiDicomizer.convert(spec["mrxs"], spec["out"], include_label=False)
    _write_result(
        spec["result"], {"inner_seconds": time.perf_counter() - started, "files": len(files)}
    )


def child_convert_slide(spec: dict[str, Any]) -> None:
    """The bare `convert_slide` with the IDC metadata, as the asset calls it (no Dagster)."""
    started = time.perf_counter()
    from bms_pipeline.core.clinical.patients import clinical_for
    from bms_pipeline.core.collection import CollectionConfig
    from bms_pipeline.core.dicom.convert import ConversionSettings, SlideIdentity, convert_slide
    from bms_pipeline.core.dicom.metadata import (
        SlideContext,
        build_post_processor,
        build_pre_processor,
        build_wsi_metadata,
    )
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.core.mirax.inventory import openslide_properties
    from bms_pipeline.core.slide_id import patient_id_of

    layout = DataLayout.at(spec["data_root"])
    slide_id = spec["slide_id"]
    patient_id = patient_id_of(slide_id)
    collection = CollectionConfig.load(layout.collection_yaml)
    call_started = time.perf_counter()
    context = SlideContext(
        collection,
        slide_id,
        clinical_for(layout.clinical_csv, patient_id),
        openslide_properties(layout.mrxs(slide_id)),
    )
    result = convert_slide(
        layout.mrxs(slide_id),
        layout.sm_dir(slide_id),
        layout.staging_dir,
        SlideIdentity(collection.collection_id, patient_id, slide_id),
        metadata=build_wsi_metadata(context),
        metadata_post_processor=build_post_processor(context),
        metadata_pre_processor=build_pre_processor(collection),
        settings=ConversionSettings(workers=spec["workers"]),
    )
    _write_result(
        spec["result"],
        {
            "call_seconds": time.perf_counter() - call_started,
            "inner_seconds": result.seconds,
            "setup_seconds": call_started - started,
        },
    )


def child_codec(spec: dict[str, Any]) -> None:
    """D: decode every stored source JPEG of the written levels and encode `tiles` output
    tiles with libjpeg-turbo (imagecodecs, as wsidicom's JpegEncoder), one thread per core."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from imagecodecs import JPEG8, jpeg8_decode, jpeg8_encode

    datafiles, records = level_records(Path(spec["mrxs"]))
    flat = [r for level in sorted(records)[: spec["levels"]] for r in records[level]]
    fds = [os.open(p, os.O_RDONLY) for p in datafiles]
    batch = 32
    batches = [flat[i : i + batch] for i in range(0, len(flat), batch)]
    n_tiles = spec["tiles"]
    quotas = [
        round((i + 1) * n_tiles / len(batches)) - round(i * n_tiles / len(batches))
        for i in range(len(batches))
    ]

    def work(items: list[tuple[int, int, int]], quota: int) -> tuple[int, int, int]:
        decoded = [jpeg8_decode(os.pread(fds[f], length, offset)) for f, offset, length in items]
        decoded_px = sum(d.shape[0] * d.shape[1] for d in decoded)
        encoded_bytes = 0
        for k in range(quota):
            a, b = decoded[k % len(decoded)], decoded[(k + 1) % len(decoded)]
            tile = np.zeros((TILE, TILE, 3), dtype=np.uint8)
            stack = (
                np.concatenate([a[:, :TILE], b[:, :TILE]])[:TILE]
                if a.shape[1] == b.shape[1]
                else a[:TILE, :TILE]
            )
            tile[: stack.shape[0], : stack.shape[1]] = stack
            encoded_bytes += len(
                jpeg8_encode(tile, level=QUALITY, subsampling="422", outcolorspace=JPEG8.CS.YCbCr)
            )
        return len(items), decoded_px, encoded_bytes

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        results = list(pool.map(work, batches, quotas))
    seconds = time.perf_counter() - started
    for fd in fds:
        os.close(fd)
    _write_result(
        spec["result"],
        {
            "inner_seconds": seconds,
            "decoded_images": sum(r[0] for r in results),
            "decoded_pixels": sum(r[1] for r in results),
            "encoded_tiles": n_tiles,
            "encoded_bytes": sum(r[2] for r in results),
        },
    )


STAGES = ("read", "blank", "opacity", "argb2rgba", "composite", "encode_rgb", "encode_bgra")


def child_stages(spec: dict[str, Any]) -> None:
    """One thread, stage by stage: wsidicomizer's stock per-tile path (read, blank check,
    `argb2rgba`, int32 compositing, encode RGB) and the project's `FastOpenSlideSource` path
    (read, blank check, opacity check, then libjpeg-turbo straight from BGRA for opaque tiles,
    or `argb2rgba` + its cheaper compositing + encode for the others), on whole tile rows
    (raster order, as the converter reads them) spread over every written level. Checks the
    project path's bit-identity claims on every sampled tile."""
    import ctypes

    import numpy as np
    from imagecodecs import JPEG8, jpeg8_encode
    from openslide import OpenSlide
    from wsidicom.codec import Encoder, JpegSettings
    from wsidicomizer.extras.openslide.openslide import _read_region, convert_argb_to_rgba
    from wsidicomizer.extras.openslide.openslide_image_data import OpenSlideLevelImageData

    try:
        from bms_pipeline.core.dicom.fast_source import composite_over_background
    except ImportError:
        composite_over_background = None
    try:
        from bms_pipeline.core.dicom.fast_source import (
            FastOpenSlideLevelImageData,
            decoded_image_cache_bytes,
        )
        from bms_pipeline.core.mirax.direct import MiraxDirectReader
    except ImportError:
        MiraxDirectReader = None

    class Stub:  # the two stock methods only read `blank_color`
        blank_color = (255, 255, 255)

    stub = Stub()
    slide = OpenSlide(spec["mrxs"])
    reader = (
        MiraxDirectReader.open(Path(spec["mrxs"]), decoded_image_cache_bytes(slide.dimensions[0]))
        if MiraxDirectReader is not None
        else None
    )
    props = slide.properties
    bx, by = int(props.get("openslide.bounds-x", 0)), int(props.get("openslide.bounds-y", 0))
    bw, bh = spec["bounds"]
    encoder = Encoder.create_for_settings(JpegSettings(quality=QUALITY))
    settings = encoder.settings
    subsampling = settings.subsampling.name.lstrip("R")
    per_level = []
    for level in range(spec["levels"]):
        scale = 2**level
        tw, th = math.ceil(bw // scale / TILE), math.ceil(bh // scale / TILE)
        n = min(th, spec["rows"])
        rows = sorted({min(th - 1, int((i + 0.5) * th / n)) for i in range(n)})
        stock = dict.fromkeys(STAGES, 0.0)
        fast = dict.fromkeys(STAGES, 0.0)
        tiles = opaque = blanks = 0
        partial_pixels = 0
        for ty in rows:
            for tx in range(tw):
                t = [time.perf_counter()]
                bgra = np.empty((TILE, TILE, 4), dtype=np.uint8)
                _read_region(
                    slide._osr,
                    bgra.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                    bx + tx * TILE * scale,
                    by + ty * TILE * scale,
                    level,
                    TILE,
                    TILE,
                )
                t.append(time.perf_counter())
                blank = OpenSlideLevelImageData._detect_blank_tile(stub, bgra)  # type: ignore[arg-type]
                t.append(time.perf_counter())
                is_opaque = bool(bgra[..., 3].min() == 255)
                t.append(time.perf_counter())
                tiles += 1
                stock["read"] += t[1] - t[0]
                stock["blank"] += t[2] - t[1]
                if reader is not None and reader.supports_level(level):
                    t0 = time.perf_counter()
                    mine_bgra = reader.read_bgra(
                        level, bx + tx * TILE * scale, by + ty * TILE * scale, TILE, TILE
                    )
                    fast["read"] += time.perf_counter() - t0
                    if not np.array_equal(mine_bgra, bgra):
                        raise AssertionError(
                            f"direct MIRAX read differs from OpenSlide's (level {level})"
                        )
                else:
                    fast["read"] += t[1] - t[0]
                if reader is not None:
                    t0 = time.perf_counter()
                    verdict = FastOpenSlideLevelImageData._is_blank(
                        stub, bgra.view(np.uint32)[..., 0]
                    )  # type: ignore[arg-type]
                    fast["blank"] += time.perf_counter() - t0
                    if verdict != blank:
                        raise AssertionError(
                            "the project's blank check disagrees with wsidicomizer's"
                        )
                else:
                    fast["blank"] += t[2] - t[1]
                if blank:
                    blanks += 1
                    continue
                fast["opacity"] += t[3] - t[2]
                opaque += is_opaque
                alpha = bgra[..., 3]
                partial_pixels += int(((alpha != 0) & (alpha != 255)).sum())
                direct = None
                if is_opaque:
                    t0 = time.perf_counter()
                    direct = bytes(
                        jpeg8_encode(
                            bgra,
                            level=QUALITY,
                            subsampling=subsampling,
                            colorspace=JPEG8.CS.EXT_BGRA,
                            outcolorspace=JPEG8.CS.YCbCr,
                        )
                    )
                    fast["encode_bgra"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                convert_argb_to_rgba(bgra.view(ctypes.c_uint32))
                t1 = time.perf_counter()
                rgb = OpenSlideLevelImageData._composite_over_background(stub, bgra)  # type: ignore[arg-type]
                t2 = time.perf_counter()
                encoded = encoder.encode(rgb)
                t3 = time.perf_counter()
                stock["argb2rgba"] += t1 - t0
                stock["composite"] += t2 - t1
                stock["encode_rgb"] += t3 - t2
                if direct is not None and direct != encoded:
                    raise AssertionError("JPEG from BGRA differs from wsidicomizer's JPEG")
                if not is_opaque:
                    fast["argb2rgba"] += t1 - t0
                    fast["encode_rgb"] += t3 - t2
                    if composite_over_background is not None:
                        t4 = time.perf_counter()
                        mine = composite_over_background(bgra, stub.blank_color)
                        fast["composite"] += time.perf_counter() - t4
                        if not np.array_equal(mine, rgb):
                            raise AssertionError("project compositing differs from wsidicomizer's")
        per_level.append(
            {
                "level": level,
                "tiles_total": tw * th,
                "tiles_sampled": tiles,
                "opaque": opaque,
                "blank": blanks,
                "partial_pixels": partial_pixels,
                "stock_ms": {k: v / tiles * 1000 for k, v in stock.items()},
                "fast_ms": {k: v / tiles * 1000 for k, v in fast.items()},
            }
        )
    direct_levels = [
        lv for lv in range(spec["levels"]) if reader is not None and reader.supports_level(lv)
    ]
    if reader is not None:
        reader.close()
    _write_result(
        spec["result"],
        {
            "levels": per_level,
            "direct_levels": direct_levels,
            "project_composite": composite_over_background is not None,
        },
    )


CHILDREN: dict[str, Callable[[dict[str, Any]], None]] = {
    "stages": child_stages,
    "dagster": child_dagster,
    "init_instance": child_init_instance,
    "api": child_wsidicomizer_api,
    "convert_slide": child_convert_slide,
    "codec": child_codec,
}


# --------------------------------------------------------------------------- measuring


@dataclass
class Proc:
    wall: float
    max_rss_mb: float
    user: float
    sys: float
    returncode: int
    log: Path
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# Children are started by a small runner process, not by this one: on Linux a child's
# ru_maxrss starts from the RSS high-water mark of the process it was forked from, so
# forking from this (large) process would report at least our own RSS for every child.
RUNNER = r"""
import json, os, subprocess, sys, threading, time
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(job["cmd"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=job["cwd"], env=job["env"])
        timer = threading.Timer(job["timeout"], proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"wall": wall, "rc": proc.returncode, "maxrss_kib": usage.ru_maxrss,
                      "user": usage.ru_utime, "sys": usage.ru_stime}), flush=True)
"""
_runner: subprocess.Popen[str] | None = None


def start_runner() -> None:
    global _runner
    if _runner is None:
        _runner = subprocess.Popen(
            [sys.executable, "-S", "-c", RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )


def run_measured(
    cmd: Sequence[str], log: Path, cwd: Path = PROJECT_ROOT, timeout: float = 3600
) -> Proc:
    """Run `cmd` as a child (of the runner); wall time around it, peak RSS and CPU times
    from wait4."""
    start_runner()
    assert _runner is not None and _runner.stdin is not None and _runner.stdout is not None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    job = {"cmd": list(cmd), "log": str(log), "cwd": str(cwd), "env": env, "timeout": timeout}
    _runner.stdin.write(json.dumps(job) + "\n")
    _runner.stdin.flush()
    r = json.loads(_runner.stdout.readline())
    return Proc(r["wall"], r["maxrss_kib"] / 1024.0, r["user"], r["sys"], r["rc"], log)


def run_child(kind: str, spec: dict[str, Any], log: Path, wrapper: Sequence[str] = ()) -> Proc:
    result = log.with_suffix(".json")
    spec = dict(spec, result=str(result))
    proc = run_measured(
        [*wrapper, sys.executable, "-m", MODULE, "_child", kind, json.dumps(spec)], log
    )
    if proc.ok and result.exists():
        proc.result = json.loads(result.read_text(encoding="utf-8"))
    return proc


def tool(name: str) -> str | None:
    """An executable from the project venv (next to the interpreter) or PATH."""
    for candidate in (Path(sys.executable).parent / name, PROJECT_ROOT / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def openslide_library() -> str:
    import openslide_bin

    lib_dir = Path(openslide_bin.__file__).parent
    return str(min(lib_dir.glob("libopenslide.so*")))


def ensure_orthanc(install: bool) -> tuple[str | None, str]:
    exe = shutil.which("OrthancWSIDicomizer")
    if exe:
        return exe, ""
    if not install:
        return None, "OrthancWSIDicomizer not installed (and --no-install given)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "OrthancWSIDicomizer not installed and apt-get is not usable (not root?)"
    print("installing orthanc-wsi with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = ["apt-get", "install", "-y", "orthanc-wsi"]
    done = subprocess.run(install_cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, env=env)
        done = subprocess.run(install_cmd, check=False, capture_output=True, text=True, env=env)
    exe = shutil.which("OrthancWSIDicomizer")
    if exe is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"apt-get install orthanc-wsi failed: {tail[0]}"
    return exe, ""


# --------------------------------------------------------------------------- outputs


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

    def _psnr(self, read) -> float:  # type: ignore[no-untyped-def]
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
                self._source = self._psnr(
                    lambda x, y: np.asarray(
                        slide.read_region((x + bx, y + by), 0, (self.size, self.size))
                    )[..., :3]
                )
        return self._source


# --------------------------------------------------------------------------- variants


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


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
            out[jobs] = {
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


# --------------------------------------------------------------------------- profile parsing

# Innermost frames of threads that are blocked, not computing: py-spy (without --native)
# still samples a thread blocked in a C call such as a lock or queue wait, so these are
# taken out before the shares of CPU are computed.
WAITING = (
    "Condition.wait (",
    "_wait_for_tstate_lock (",
    "Event.wait (",
    "Semaphore.acquire (",
    "Queue.get (",
    "SimpleQueue.get (",
    "_worker (futures/thread.py",
    "select (",
    "sleep (",
)

# The innermost frame that matches decides a sample's bucket (C code called from Python is
# charged to its Python caller, as py-spy records without --native).
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    (
        "RGBA->RGB compositing (wsidicomizer int32, or the project's for partly transparent tiles)",
        ("_composite_over_background (", "composite_over_background ("),
    ),
    (
        "blank-tile detection (`_detect_blank_tile`, the project's `_is_blank`)",
        ("_detect_blank_tile (", "_is_blank ("),
    ),
    ("opacity check (`bgra[..., 3].min()`)", ("_amin (", "_wrapreduction (")),
    ("JPEG encode (libjpeg-turbo via imagecodecs)", ("Encoder.encode (codec/encoder.py",)),
    ("pyramid downsampling", ("downsample",)),
    ("writing frames and files", ("write", "_write", "flush", "tell (")),
    (
        "queues, scheduling, thread hand-off",
        ("put (", "get (", "submit (", "_process_batch (", "run ("),
    ),
    ("opening the slide, metadata, datasets", ("open (", "__init__ (", "metadata", "dataset")),
    (
        "imports and interpreter start-up",
        ("_find_and_load", "<module>", "_call_with_frames_removed"),
    ),
]


def _call_lines(cls: type, method: str, needles: Sequence[str]) -> list[str]:
    """`Class.method (dir/file.py:LINE` keys of the lines in `method` that call a needle:
    ctypes and C-extension calls show up in py-spy as their Python caller's line."""
    import inspect

    function = getattr(cls, method)
    lines, first = inspect.getsourcelines(function)
    path = inspect.getsourcefile(function) or ""
    short = "/".join(path.split("/")[-2:])
    return [
        f"{function.__qualname__} ({short}:{first + i}"
        for i, text in enumerate(lines)
        if any(needle in text for needle in needles)
    ]


def profile_buckets() -> list[tuple[str, tuple[str, ...]]]:
    """BUCKETS, with the C calls made from `_get_region` (stock) and from the project's
    `FastOpenSlideLevelImageData` resolved to their source lines."""
    from wsidicomizer.extras.openslide.openslide_image_data import OpenSlideLevelImageData

    read = _call_lines(OpenSlideLevelImageData, "_get_region", ["_read_region("])
    argb = _call_lines(OpenSlideLevelImageData, "_get_region", ["convert_argb_to_rgba("])
    encode: list[str] = []
    try:
        from bms_pipeline.core.dicom.fast_source import FastOpenSlideLevelImageData as Fast

        for method in ("_read_bgra", "_get_region", "get_encoded_tile"):
            if hasattr(Fast, method) and method in vars(Fast):
                read += _call_lines(Fast, method, ["_read_region("])
                argb += _call_lines(Fast, method, ["convert_argb_to_rgba("])
                encode += _call_lines(Fast, method, ["jpeg8_encode("])
    except ImportError:
        pass
    return [
        BUCKETS[0],
        BUCKETS[1],
        (
            "OpenSlide `read_region` in C (MIRAX JPEG decode, stitching, premultiplied ARGB)",
            tuple(read),
        ),
        (
            "direct MIRAX read (`MiraxDirectReader`: camera JPEG decode to BGRA, cache, paste)",
            ("decode_image_bgra (", "MiraxDirectReader.", "_ImageCache."),
        ),
        ("ARGB->RGBA (`argb2rgba`)", tuple(argb)),
        ("JPEG encode (libjpeg-turbo via imagecodecs)", (*encode, *BUCKETS[3][1])),
        BUCKETS[2],
        *BUCKETS[4:],
        (
            "the rest of `_get_region` / `get_encoded_tile`",
            ("_get_region (", "get_encoded_tile (", "_read_bgra ("),
        ),
    ]


def _frame_name(frame: str) -> str:
    """`func (path/file.py:12)` -> `func (file.py)`; `0x... (lib.so)` -> `[lib.so]`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if name.startswith("0x"):
        return f"[{where}]"
    file, _, line = where.rpartition(":")
    short = "/".join(file.split("/")[-2:])
    return f"{name} ({short}:{line})"


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    buckets_rules = profile_buckets()
    total = 0
    waiting = 0
    leaf: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f
            for f in stack.split(";")
            if not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        if any(key in _frame_name(frames[-1]) for key in WAITING):
            waiting += count
            continue
        total += count
        leaf[_frame_name(frames[-1])] += count
        for frame in reversed(frames):
            name = _frame_name(frame)
            bucket = next((b for b, keys in buckets_rules if any(k in name for k in keys)), None)
            if bucket:
                buckets[bucket] += count
                break
        else:
            buckets["other"] += count
    return {
        "samples": total,
        "waiting": waiting,
        "top_self": [(name, n / total) for name, n in leaf.most_common(top)] if total else [],
        "buckets": [(name, n / total) for name, n in buckets.most_common()] if total else [],
    }


# --------------------------------------------------------------------------- report


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
    args = bench.args
    a = bench.stats.get("A")
    a_wall = a.median("wall") if a and a.samples else float("nan")
    bw, bh = bench.bounds
    lines: list[str] = []
    add = lines.append
    add("# Conversion benchmarks")
    add("")
    add(
        f"Generated by `bms_pipeline_tests/benchmarks/bench_conversion.py` on "
        f"{started:%Y-%m-%d %H:%M} UTC. Rerun from the project root with:"
    )
    add("")
    add("```sh")
    add(
        "uv run --with py-spy python -m bms_pipeline_tests.benchmarks.bench_conversion "
        + " ".join(argv)
    )
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
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        CHILDREN[argv[1]](json.loads(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
