"""Which slides under raw/slides are ready to convert, and which are not (and why)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bms_pipeline.core.layout import override_names
from bms_pipeline.core.mirax.inventory import (
    SlideError,
    check_complete,
    file_signature,
    newest_mtime,
)
from bms_pipeline.core.slide_id import patient_id_of

if TYPE_CHECKING:
    from bms_pipeline.core.storage import StorageRoot


@dataclass(frozen=True)
class SlideStatus:
    slide_id: str
    mrxs_path: Path
    ready: bool
    signature: str
    reason: str = ""


def scan_slides(
    slides_dir: Path,
    settle_seconds: float = 0.0,
    previous_signatures: dict[str, str] | None = None,
    now: float | None = None,
    extra_inputs: Callable[[str], Sequence[Path]] | None = None,
) -> list[SlideStatus]:
    """Every `.mrxs` under `slides_dir`, each ready or not with the reason.

    A slide is ready when it is complete and not being written: its files are unchanged
    since the previous scan, or untouched for `settle_seconds`. `extra_inputs` names further
    files per slide (metadata overrides) whose changes count as the slide's.
    """
    now = time.time() if now is None else now
    previous = previous_signatures or {}
    statuses = []
    for mrxs in sorted(Path(slides_dir).glob("*.mrxs")):
        slide_id = mrxs.stem
        signature = file_signature(mrxs, extra_inputs(slide_id) if extra_inputs else ())
        try:
            patient_id_of(slide_id)
            check_complete(mrxs)
        except (SlideError, ValueError) as exc:
            statuses.append(SlideStatus(slide_id, mrxs, False, signature, str(exc)))
            continue
        settled = now - newest_mtime(mrxs) >= settle_seconds
        if not settled and previous.get(slide_id) != signature:
            statuses.append(
                SlideStatus(slide_id, mrxs, False, signature, f"{mrxs}: files are still changing")
            )
            continue
        statuses.append(SlideStatus(slide_id, mrxs, True, signature))
    return statuses


def _remote_slide_signature(
    slide_id: str, slides: dict[str, dict], overrides: dict[str, dict]
) -> tuple[str, list[str]]:
    from bms_pipeline.core.storage import listing_signature

    prefix = f"raw/slides/{slide_id}"
    names = sorted(n for n in slides if n == f"{prefix}.mrxs" or n.startswith(f"{prefix}/"))
    extra = [n for n in override_names(slide_id) if n in overrides]
    entries = {n: slides[n] for n in names} | {n: overrides[n] for n in extra}
    return listing_signature(entries), names


def remote_slide_signature(root: StorageRoot, slide_id: str) -> str:
    """The change detector of a slide on a remote root: names, sizes and store versions of its
    files and override files (the same value `scan_remote_slides` reports)."""
    return _remote_slide_signature(slide_id, root.listing("raw/slides"), root.listing("overrides"))[
        0
    ]


def scan_remote_slides(
    root: StorageRoot,
    settle_seconds: float = 0.0,
    previous_signatures: dict[str, str] | None = None,
) -> list[SlideStatus]:
    """`scan_slides` for a root in object storage, from one listing and without downloading.

    Completeness beyond the presence of Slidedat.ini and Index.dat is checked when the slide
    is staged (by `mrxs_slide`); a slide counts as settled once two scans see the same files.
    """
    previous = previous_signatures or {}
    slides = root.listing("raw/slides")
    overrides = root.listing("overrides")
    statuses = []
    for name in sorted(n for n in slides if n.count("/") == 2 and n.endswith(".mrxs")):
        slide_id = PurePosixPath(name).stem
        url = root.url_of(name)
        signature, names = _remote_slide_signature(slide_id, slides, overrides)
        local = root.local_root / name
        try:
            patient_id_of(slide_id)
        except ValueError as exc:
            statuses.append(SlideStatus(slide_id, local, False, signature, str(exc)))
            continue
        missing = [
            f for f in ("Slidedat.ini", "Index.dat") if f"raw/slides/{slide_id}/{f}" not in names
        ]
        if missing:
            reason = f"{url}: slide folder lacks {', '.join(missing)}"
            statuses.append(SlideStatus(slide_id, local, False, signature, reason))
            continue
        if settle_seconds > 0 and previous.get(slide_id) != signature:
            reason = f"{url}: files are new or still changing"
            statuses.append(SlideStatus(slide_id, local, False, signature, reason))
            continue
        statuses.append(SlideStatus(slide_id, local, True, signature))
    return statuses
