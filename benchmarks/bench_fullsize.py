"""One slide of real BMDeep size through every step, against OrthancWSIDicomizer (issue 29).

    python3.12 -m uv run bms-pipeline demo-data --data-root .bench/full/data --size full --slides 1
    nice -n 19 python3.12 -m uv run python -m benchmarks.bench_fullsize \\
        .bench/full/data

(`--size full --width 190528 --height 112192` for the quarter-height slide.) In one run, on
the same slide, each in a fresh process started by a small runner (wall time around it,
CPU and the largest process's peak RSS from `os.wait4`):

* **job**: `bms-pipeline run --force` on a fresh data root whose raw/ is the slide
  (conversion with the publication gate and THUMBNAIL, annotations, dciodvfy/dcentvfy
  validation, index and clinical tables, checks, Dagster); each step's wall time from the
  run's event log;
* **orthanc**: OrthancWSIDicomizer 1.1 through OpenSlide, 1024 px tiles, q80, a thread per
  core, all of its levels; `--orthanc-max-size` MB per instance (default 0: one instance a
  level, which OrthancWSIDicomizer keeps whole in memory, about 33 GB at full height: use
  1024 there);
* **dciodvfy**: on the job's largest file alone (its time and memory on the biggest file);
* **readers**: the last frame of level 0 of that file through pydicom (lazily, frame by
  frame), wsidicom, OpenSlide, highdicom and dcmtk (`dcmj2pnm +F`, measured), compared
  with each other.

* **job_s3** (`--s3`, `--s3 s3rver` at full height): the job with an `s3://` output root
  on a local S3 server, after the others.
* **job_dicomweb** (`--dicomweb N`): the job publishing to a local Orthanc (Debian's, with
  its DICOMweb plugin, storage on this disk) with `conventions.sm.concatenate_frames: N`
  (levels of more than N frames as Concatenations); Orthanc's peak memory, what it holds,
  and the last frame of level 0 retrieved from it by WADO-RS against the file's.

The free disk is checked first: the source stays, and the job's output and
OrthancWSIDicomizer's are on disk at once (about 2x the source), and more for `--s3`; the
run says how much it needs when there is less.

A sampler polls every second: the summed RSS of the whole process tree and the largest
process's (kept as `<step>.rss.json`: time, largest MiB, tree MiB; the job's result names the
steps running at the largest process's peak), and every 5 s the bytes under the variant's
output folder (staging included; the source is counted once, apart). Results go to
`<cache>/logs/fullsize-<name>/results.json` and are printed as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_width import conversion_seconds, job_phases, step_windows
from benchmarks.conversion.common import PROJECT_ROOT, cores
from benchmarks.conversion.datasets import run_root, single_slide
from benchmarks.conversion.measuring import (
    Proc,
    ensure_orthanc,
    openslide_library,
    run_measured,
)
from benchmarks.conversion.outputs import base_size, dicom_files

QUALITY = 80
TIMEOUT_S = 8 * 3600  # per measured step


def _tree_rss(root_pid: int) -> tuple[int, int, int]:
    """(summed RSS, the largest process's RSS, its pid) of `root_pid`'s descendants (not
    itself: the measuring runner), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * page
    total, largest, largest_pid, todo = 0, 0, 0, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        if rss.get(pid, 0) > largest:
            largest, largest_pid = rss[pid], pid
        todo += children.get(pid, [])
    return total, largest, largest_pid


def _folder_bytes(folder: Path) -> int:
    """Allocated bytes under `folder`, not following symlinks (the linked source)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


class Sampler:
    """Peak tree RSS and peak bytes under `folder` while a measured child runs."""

    def __init__(self, folder: Path) -> None:
        from benchmarks.conversion import measuring

        self.folder = folder
        self.runner = measuring._runner.pid if measuring._runner else os.getpid()  # noqa: SLF001
        self.peak_rss = 0
        self.peak_disk = 0
        self.series: list[tuple[float, int, int]] = []
        """(time, the largest process's RSS MiB, the tree's RSS MiB), every second."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(1.0):
            total, largest, _pid = _tree_rss(self.runner)
            self.peak_rss = max(self.peak_rss, total)
            self.series.append((round(time.time(), 1), largest >> 20, total >> 20))
            ticks += 1
            if ticks % 5 == 0:  # walking the output folder costs more than /proc
                self.peak_disk = max(self.peak_disk, _folder_bytes(self.folder))

    def peak_time(self) -> float | None:
        """When the largest process was at its highest RSS."""
        return max(self.series, key=lambda sample: sample[1])[0] if self.series else None

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_disk = max(self.peak_disk, _folder_bytes(self.folder))


def measured(cmd: list[str], log: Path, folder: Path, cwd: Path | None = None) -> dict[str, Any]:
    from benchmarks.conversion.measuring import start_runner

    start_runner()
    folder.mkdir(parents=True, exist_ok=True)
    with Sampler(folder) as sampler:
        # A full-height job takes about an hour on a loaded 2-core machine: no 1 h timeout.
        proc: Proc = run_measured(cmd, log, cwd=cwd or PROJECT_ROOT, timeout=TIMEOUT_S)
    log.with_suffix(".rss.json").write_text(json.dumps(sampler.series))
    return {
        "wall_s": round(proc.wall, 1),
        "cpu_s": round(proc.user + proc.sys, 1),
        "max_process_rss_mib": round(proc.max_rss_mb),
        "tree_rss_mib": round(sampler.peak_rss / 2**20),
        "peak_disk_gb": round(sampler.peak_disk / 1e9, 2),
        "rc": proc.returncode,
        "rss_peak_at": sampler.peak_time(),
    }


def steps_at(home: Path, moment: float) -> list[str]:
    """The job's steps running at `moment` (from its instance's step events)."""
    return sorted(key for key, (start, end) in step_windows(home).items() if start <= moment <= end)


@contextlib.contextmanager
def _s3_server(log: Path) -> Iterator[Any]:
    """moto's S3 server, as the live tests start it, given longer to start on a loaded
    machine (it imported for over 30 s, niced, beside the full-height job)."""
    from bms_pipeline_tests.live.services import S3Server, free_port, port_open, wait_for

    port = free_port()
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 300, "moto's S3 server to listen")
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(30)


def measured_job(root: Path, args: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """`run --data-root root --force *args`, measured, with `env` in its environment (the
    measured child inherits this process's, restored after)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return measured(
            [sys.executable, "-m", "bms_pipeline.cli", "run", "--data-root", str(root), "--force"]
            + args,
            log,
            root,
            cwd=Path.cwd(),
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)


def s3_job(
    source_root: Path, scratch: Path, logs: Path, server_kind: str, cache: Path, keep: bool
) -> dict[str, Any]:
    """`run --force --output-root s3://...` against a local S3 server: moto's (as the live
    tests) or s3rver (disk-backed, for a full-height slide; `benchmarks/s3rver.py`). The
    job's local mirror of the root is put under the measured folder, so peak disk counts it;
    the server's own files and memory are reported apart."""
    from bms_pipeline.core.url_roots import SCRATCH_ENV

    server_context: contextlib.AbstractContextManager[Any]
    if server_kind == "s3rver":
        from benchmarks.s3rver import s3rver_server

        server_context = s3rver_server(
            cache / "s3rver", scratch / "s3rver-store", logs / "s3rver.log"
        )
    else:
        server_context = _s3_server(logs / "moto.log")
    with server_context as server:
        bucket = server.new_bucket()
        root = run_root(source_root, scratch)
        env = {**server.env(), SCRATCH_ENV: str(root / "s3-mirror")}
        sample = measured_job(
            root, ["--output-root", f"s3://{bucket}/out"], env, logs / "job-s3.log"
        )
        sample["server"] = server_kind
        sample["server_peak_rss_mib"] = _peak_rss_mib(server.process.pid)
        try:
            fs = server.filesystem()
            keys = fs.find(f"{bucket}/out")
            sizes = [int(fs.size(key) or 0) for key in keys]
        except Exception as exc:  # noqa: BLE001 - a survey: record it and go on
            sample["listing_error"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            sample["objects"] = len(keys)
            sample["dcm_objects"] = sum(1 for key in keys if key.endswith(".dcm"))
            sample["uploaded_gb"] = round(sum(sizes) / 1e9, 2)
            sample["largest_object_gb"] = round(max(sizes, default=0) / 1e9, 2)
        if not keep:  # its mirror (the output's size) need not wait for the others
            shutil.rmtree(root, ignore_errors=True)
    return sample


def dicomweb_job(
    source_root: Path, scratch: Path, logs: Path, frames: int, keep: bool
) -> dict[str, Any]:
    """`run --force --dicomweb-url` against a local Orthanc, with the SM levels written as
    Concatenations of at most `frames` frames: Orthanc holds about three times an instance
    in memory and returns nothing past 2 GiB, so a 13.5 GB level 0 cannot go in whole."""
    import yaml

    from bms_pipeline.core.dicom.levels import levels_of
    from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, USER_ENV
    from bms_pipeline_tests.orthanc import PASSWORD, USER, running_orthanc

    root = run_root(source_root, scratch)
    config = yaml.safe_load((root / "collection.yaml").read_text()) or {}
    config.setdefault("conventions", {}).setdefault("sm", {})["concatenate_frames"] = frames
    (root / "collection.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with running_orthanc(scratch / "orthanc-server") as server:
        began = time.time()
        sample = measured_job(
            root,
            ["--dicomweb-url", server.dicomweb_url],
            {USER_ENV: USER, PASSWORD_ENV: PASSWORD},
            logs / "job-dicomweb.log",
        )
        ended = time.time()
        sample["concatenate_frames"] = frames
        if sample["rc"] == 0:
            sample.update(job_phases(root / ".dagster", began, ended))
        sample["server_peak_rss_mib"] = _peak_rss_mib(server.process.pid)
        stats = server.rest("/statistics")
        assert isinstance(stats, dict)
        sample["server_instances"] = stats.get("CountInstances")
        sample["server_disk_gb"] = round(int(stats.get("TotalDiskSize", 0)) / 1e9, 2)
        files = [f for f in dicom_files(root / "out" / "dicom") if f.suffix == ".dcm"]
        if files:
            sample["output_gb"] = round(sum(f.stat().st_size for f in files) / 1e9, 2)
            sample["largest_file_gb"] = round(max(f.stat().st_size for f in files) / 1e9, 2)
            base = [lv for lv in levels_of(f for f in files if "/sm/" in str(f))][0]
            sample["base_parts"] = len(base.parts)
            sample["base_frames"] = base.frames
            sample["last_frame_from_server"] = _last_frame_from_server(server, base)
            try:
                sample["readers"] = readers(base.parts[-1].path, scratch)
            except Exception as exc:  # noqa: BLE001 - a survey: record it and go on
                sample["readers"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch / "orthanc-server", ignore_errors=True)
    return sample


def _last_frame_from_server(server: Any, base: Any) -> dict[str, Any]:
    """The last frame of level 0, by WADO-RS from the server, against the file's bytes."""
    import requests
    from pydicom import dcmread
    from pydicom.encaps import get_frame

    from bms_pipeline_tests.orthanc import PASSWORD, USER

    part = base.parts[-1]
    with open(part.path, "rb") as handle:
        ds = dcmread(handle, stop_before_pixels=False, defer_size=1024)
        ours = get_frame(ds.PixelData, part.frames - 1, number_of_frames=part.frames)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    started = time.perf_counter()
    response = requests.get(
        f"{server.dicomweb_url}/studies/{study}/series/{series}/instances/"
        f"{part.sop_instance_uid}/frames/{part.frames}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
        auth=(USER, PASSWORD),
        timeout=600,
    )
    seconds = time.perf_counter() - started
    body = response.content
    return {
        "status": response.status_code,
        "seconds": round(seconds, 2),
        "part": part.number,
        "frame_in_part": part.frames,
        "frame_in_level": part.frame_offset + part.frames,
        "bytes": len(ours),
        "equal": response.ok and ours in body,
    }


def _peak_rss_mib(pid: int) -> int | None:
    """VmHWM of a running process (the S3 server's), from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        return None
    return None


def readers(path: Path, scratch: Path) -> dict[str, Any]:
    """The last frame of the file through each reader: its decoded mean and whether all agree."""
    import numpy as np
    import pydicom
    from pydicom.encaps import get_frame

    out: dict[str, Any] = {"file_gb": round(path.stat().st_size / 1e9, 2)}
    pixels: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    ds = pydicom.dcmread(path, defer_size="1 KB")  # PixelData stays on disk until asked
    frames = int(ds.NumberOfFrames)
    out["frames"] = frames
    out["eot"] = "ExtendedOffsetTable" in ds
    last = frames - 1
    raw: bytes | None = None
    if out["eot"]:
        offsets = np.frombuffer(ds.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(ds.ExtendedOffsetTableLengths, "<u8")
        out["last_offset_gb"] = round(float(offsets[last]) / 1e9, 2)
        # Frame items start after the PixelData header and the Basic Offset Table item.
        with open(path, "rb") as handle:
            tell = ds["PixelData"].file_tell  # the value: the BOT item first
            assert tell is not None
            handle.seek(tell)
            bot_tag, bot_len = handle.read(4), int.from_bytes(handle.read(4), "little")
            assert bot_tag == b"\xfe\xff\x00\xe0"
            first = handle.tell() + bot_len
            handle.seek(first + int(offsets[last]) + 8)
            raw = handle.read(int(lengths[last]))
    else:
        raw = get_frame(ds.PixelData, last, number_of_frames=frames)
    from imagecodecs import jpeg8_decode

    pixels["pydicom"] = jpeg8_decode(raw)
    out["pydicom_s"] = round(time.perf_counter() - started, 2)
    cols, rows = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    tile = int(ds.Columns)
    tiles_x = -(-cols // tile)
    # The last part of a concatenated level holds the level's last frames.
    in_level = int(ds.get("ConcatenationFrameOffsetNumber", 0)) + last
    out["frame_in_level"] = in_level + 1
    tx, ty = in_level % tiles_x, in_level // tiles_x
    try:
        from wsidicom import WsiDicom

        with WsiDicom.open(path.parent) as wsi:
            pixels["wsidicom"] = np.asarray(wsi.read_tile(0, (tx, ty)))[..., :3]
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a survey
        out["wsidicom_error"] = f"{type(exc).__name__}: {exc}"[:200]
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            w = min(tile, cols - tx * tile)
            h = min(tile, rows - ty * tile)
            region = np.asarray(slide.read_region((tx * tile, ty * tile), 0, (w, h)))[..., :3]
            pixels["openslide"] = region
    except Exception as exc:  # noqa: BLE001
        out["openslide_error"] = f"{type(exc).__name__}: {exc}"[:200]
    try:
        from highdicom.io import ImageFileReader

        with ImageFileReader(path) as reader:
            pixels["highdicom"] = np.asarray(reader.read_frame(last, correct_color=False))
    except Exception as exc:  # noqa: BLE001
        out["highdicom_error"] = f"{type(exc).__name__}: {exc}"[:200]
    dcmj2pnm = shutil.which("dcmj2pnm")
    if dcmj2pnm:
        ppm = Path(tempfile.mkdtemp(prefix="dcmj2pnm-", dir=scratch)) / "last.ppm"
        sample = measured(
            [dcmj2pnm, "+F", str(frames), str(path), str(ppm)],  # 1-based frame number
            scratch / "dcmj2pnm.log",
            ppm.parent,
        )
        out["dcmtk"] = sample
        if sample["rc"] == 0 and ppm.exists():
            from PIL import Image

            with Image.open(ppm) as image:
                pixels["dcmtk"] = np.asarray(image.convert("RGB"))
        else:
            out["dcmtk_error"] = (scratch / "dcmj2pnm.log").read_text(errors="replace")[-300:]
    base = pixels["pydicom"].astype(np.int16)
    for name, image in pixels.items():
        h, w = min(base.shape[0], image.shape[0]), min(base.shape[1], image.shape[1])
        diff = np.abs(image[:h, :w, :3].astype(np.int16) - base[:h, :w, :3])
        out[f"{name}_max_diff"] = int(diff.max())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("root", help="a data root written by `demo-data --size full`")
    parser.add_argument("--cache", default=".bench", help="scratch and logs (default .bench)")
    parser.add_argument("--skip", nargs="*", default=[], help="job orthanc dciodvfy readers")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument(
        "--s3",
        nargs="?",
        const="moto",
        choices=("moto", "s3rver"),
        help="also run the job with an s3:// output root on a local S3 server: moto's (which "
        "assembles each upload in memory: not for a full-height slide on a 24 GB machine) or "
        "s3rver (npm, objects on disk; about 3.5x the source of free disk more)",
    )
    parser.add_argument(
        "--dicomweb",
        type=int,
        metavar="FRAMES",
        help="also run the job publishing to a local Orthanc, levels as Concatenations of at "
        "most FRAMES frames (4096: about 0.7 GB parts at full size)",
    )
    parser.add_argument(
        "--orthanc-max-size",
        type=int,
        default=0,
        help="OrthancWSIDicomizer --max-size in MB (0: one instance a level, held in memory)",
    )
    args = parser.parse_args(argv)
    source_root = Path(args.root).resolve()
    slide_id, mrxs = single_slide(source_root)
    name = source_root.parent.name if source_root.name == "data" else source_root.name
    logs = Path(args.cache).resolve() / "logs" / f"fullsize-{name}"
    logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"fullsize-{name}-", dir=args.cache)).resolve()
    source_bytes = _folder_bytes(mrxs.with_suffix(""))
    # The outputs stay until the end: the job's and OrthancWSIDicomizer's (each under the
    # source's size), and for the s3 run its local mirror plus, on s3rver, the upload, the
    # parts of its server-side copy and the copy at once (about 3.3x the source).
    shares = {"job": 1.0, "orthanc": 1.0}
    need = int(sum(share for step, share in shares.items() if step not in args.skip) * source_bytes)
    need += int({None: 0, "moto": 1, "s3rver": 3.5}[args.s3] * source_bytes) + 2 * 10**9
    # The job's output and Orthanc's stored copy of it.
    need += int((2.0 if args.dicomweb else 0.0) * source_bytes)
    free = shutil.disk_usage(scratch).free
    if free < need:
        shutil.rmtree(scratch, ignore_errors=True)
        print(
            f"needs about {need / 1e9:.1f} GB free under {scratch.parent} for the outputs of "
            f"a {source_bytes / 1e9:.1f} GB source, plus 2 GB; {free / 1e9:.1f} GB free",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {
        "slide": slide_id,
        "source_gb": round(source_bytes / 1e9, 2),
        "free_gb_at_start": round(free / 1e9, 1),
    }
    import openslide

    with openslide.OpenSlide(str(mrxs)) as slide:
        w = int(slide.properties["openslide.bounds-width"])
        h = int(slide.properties["openslide.bounds-height"])
    results["bounds"] = [w, h]
    results["gigapixels"] = round(w * h / 1e9, 2)
    print(f"{slide_id}: {w} x {h} px, {results['gigapixels']} GP, source {results['source_gb']} GB")
    largest: Path | None = None
    if "job" not in args.skip:
        root = run_root(source_root, scratch)
        began = time.time()
        sample = measured(
            [sys.executable, "-m", "bms_pipeline.cli", "run", "--data-root", str(root), "--force"],
            logs / "job.log",
            root,
            cwd=Path.cwd(),
        )
        ended = time.time()
        sample["conversion_s"] = conversion_seconds(logs / "job.log", slide_id)
        if sample["rc"] == 0:
            sample.update(job_phases(root / ".dagster", began, ended))
            if sample["rss_peak_at"] is not None:
                sample["rss_peak_in_steps"] = steps_at(root / ".dagster", sample["rss_peak_at"])
        # `run` writes under <root>/out (DataLayout's default output root).
        files = [f for f in dicom_files(root / "out" / "dicom") if f.suffix == ".dcm"]
        if files:
            largest = max(files, key=lambda f: f.stat().st_size)
            sample["output_gb"] = round(sum(f.stat().st_size for f in files) / 1e9, 2)
            sample["largest_file_gb"] = round(largest.stat().st_size / 1e9, 2)
            sample["base"] = list(base_size(files))
        results["job"] = sample
        print(f"job: {json.dumps(sample)}", flush=True)
        (logs / "results.json").write_text(json.dumps(results, indent=2))
    if largest is not None and "dciodvfy" not in args.skip:
        from bms_pipeline.core.validation.dicom3tools import find_tool

        sample = measured(
            [str(find_tool("dciodvfy")), str(largest)], logs / "dciodvfy.log", scratch / "none"
        )
        text = (logs / "dciodvfy.log").read_text(errors="replace")
        sample["errors"] = sum(1 for line in text.splitlines() if line.startswith("Error"))
        results["dciodvfy"] = sample
        print(f"dciodvfy: {json.dumps(sample)}", flush=True)
        (logs / "results.json").write_text(json.dumps(results, indent=2))
    if largest is not None and "readers" not in args.skip:
        try:
            results["readers"] = readers(largest, scratch)
        except Exception as exc:  # noqa: BLE001 - a survey: record it and go on
            results["readers"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"readers: {json.dumps(results['readers'])}", flush=True)
        (logs / "results.json").write_text(json.dumps(results, indent=2))
    if args.s3:
        results["job_s3"] = s3_job(
            source_root, scratch, logs, args.s3, Path(args.cache).resolve(), args.keep
        )
        print(f"job_s3: {json.dumps(results['job_s3'])}", flush=True)
        (logs / "results.json").write_text(json.dumps(results, indent=2))
    if args.dicomweb:
        results["job_dicomweb"] = dicomweb_job(source_root, scratch, logs, args.dicomweb, args.keep)
        print(f"job_dicomweb: {json.dumps(results['job_dicomweb'])}", flush=True)
        (logs / "results.json").write_text(json.dumps(results, indent=2))
    if "orthanc" not in args.skip:
        exe, why = ensure_orthanc(install=False)
        if exe:
            out = scratch / "orthanc"
            results["orthanc"] = measured(
                [
                    exe,
                    f"--openslide={openslide_library()}",
                    str(mrxs),
                    f"--folder={out}",
                    f"--threads={cores()}",
                    "--tile-width=1024",
                    "--tile-height=1024",
                    "--compression=jpeg",
                    f"--jpeg-quality={QUALITY}",
                    f"--max-size={args.orthanc_max_size}",
                ],
                logs / "orthanc.log",
                out,
            )
            results["orthanc"]["output_gb"] = round(_folder_bytes(out) / 1e9, 2)
            results["orthanc"]["max_size_mb"] = args.orthanc_max_size
            print(f"orthanc: {json.dumps(results['orthanc'])}", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        else:
            results["orthanc"] = {"skipped": why}
    (logs / "results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
