"""Which slides under raw/slides are ready to convert, and which are not (and why)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bms_pipeline.core.layout import patient_id_of
from bms_pipeline.core.mirax.inventory import (
    SlideError,
    check_complete,
    file_signature,
    newest_mtime,
)


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
