"""What each measured child process runs: one variant, stage or codec pass."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.conversion.common import QUALITY, TILE
from benchmarks.conversion.datasets import level_records


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
            convert.FastOpenSlideSource = fast_source.OpenSlideReadSource
        if default_cache:
            fast_source.decoded_image_cache_bytes = lambda *args, **kwargs: 32 << 20
    if stock_source:
        from wsidicomizer.extras.openslide import OpenSlideSource

        from bms_pipeline.core.dicom import convert

        if not hasattr(convert, "FastOpenSlideSource"):
            return "convert_slide has no FastOpenSlideSource to swap for the stock source"
        convert.FastOpenSlideSource = OpenSlideSource
    if regenerate:
        from wsidicomizer import WsiDicomizer

        original = WsiDicomizer.convert.__func__

        def convert_regenerating(cls, *args: Any, **kwargs: Any):
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
    from bms_pipeline.orchestration.operations import register_slides

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
        steps = sorted(e.step_key for e in result.all_events if e.is_step_success)  # pyright: ignore[reportArgumentType]
    (mat,) = result.asset_materializations_for_node("sm_series")
    meta = {k: v.value for k, v in mat.metadata.items()}
    _write_result(
        spec["result"],
        {
            "job_seconds": job_seconds,
            "inner_seconds": float(meta["seconds"]),  # pyright: ignore[reportArgumentType]
            "setup_seconds": job_started - started,
            "steps": steps,
        },
    )


def child_init_instance(spec: dict[str, Any]) -> None:
    """Create the persistent Dagster instance the A-like children load (storage migrated)."""
    import dagster as dg

    from bms_pipeline.orchestration.instance import ensure_instance_home
    from bms_pipeline.orchestration.operations import register_slides

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
                        stub,  # pyright: ignore[reportArgumentType]
                        bgra.view(np.uint32)[..., 0],
                    )
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
                convert_argb_to_rgba(bgra.view(ctypes.c_uint32))  # pyright: ignore[reportArgumentType]
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
