"""py-spy profiles grouped into the buckets the report names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _call_lines(cls: object, method: str, needles: Sequence[str]) -> list[str]:
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
    try:  # since the seam, the C calls are made in its two wrappers
        from bms_pipeline.core.dicom import wsidicomizer_seam as seam

        read += _call_lines(seam, "read_premultiplied_bgra", ["_READ_REGION("])
        argb += _call_lines(seam, "unpremultiply_to_rgba", ["_ARGB2RGBA("])
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
            ("decode_image_bgra (", "MiraxDirectReader.", "ImageCache."),
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
