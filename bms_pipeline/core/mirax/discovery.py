"""Which slides under raw/slides are ready to convert, and which are not (and why).

Input errors here hold back only the slides they concern, each with a reason naming the
file:

- a slide id that is not `<patient_id>_<n>_bm` with ASCII digits (`core.slide_id`);
- two spellings of one slide number (`<patient>_01_bm` beside `<patient>_1_bm`): both are
  held back, naming both files, since which one is meant cannot be told;
- a symlink loop at the slide's `.mrxs`, its folder or a file in it (reported as a loop);
- a slide file that is a symlink to outside the data root: refused. A data root is the
  unit that is converted, copied, backed up and staged to workers; a link out of it makes
  the slide depend on a place that the root does not hold (and that another host does not
  have). Links inside the root, and a data root or `raw/slides` that is itself a link, are
  fine: what counts is where the slide's files lie relative to where the root lies. The
  reason names the link, never its target (a path can hold a name).
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bms_pipeline.core.layout import override_names
from bms_pipeline.core.mirax.inventory import (
    SlideError,
    check_complete,
    file_signature,
    newest_mtime,
)
from bms_pipeline.core.slide_id import SlideId, patient_id_of

if TYPE_CHECKING:
    from bms_pipeline.core.url_roots import StorageRoot


@dataclass(frozen=True)
class FoundSlide:
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
    data_root: Path | None = None,
) -> list[FoundSlide]:
    """Every `.mrxs` under `slides_dir`, each ready or not with the reason.

    A slide is ready when it is complete and not being written: its files are unchanged
    since the previous scan, or untouched for `settle_seconds`. `extra_inputs` names further
    files per slide (metadata overrides) whose changes count as the slide's. `data_root`
    (default: the folder holding `raw/slides`) bounds where the slide's files may lie.
    """
    now = time.time() if now is None else now
    previous = previous_signatures or {}
    slides_dir = Path(slides_dir)
    roots = _allowed_roots(slides_dir, data_root)
    paths = sorted(slides_dir.glob("*.mrxs"))
    twins = _second_spellings(
        [p.stem for p in paths], lambda stem: str(slides_dir / f"{stem}.mrxs")
    )
    statuses: list[FoundSlide] = []
    for mrxs in paths:
        slide_id = mrxs.stem
        link = _link_problem(mrxs, roots)
        if link is not None:
            signature = hashlib.sha256(link.encode()).hexdigest()[:16]
            statuses.append(FoundSlide(slide_id, mrxs, False, signature, link))
            continue
        signature = file_signature(mrxs, extra_inputs(slide_id) if extra_inputs else ())
        try:
            patient_id_of(slide_id)
        except ValueError as exc:
            statuses.append(FoundSlide(slide_id, mrxs, False, signature, f"{mrxs}: {exc}"))
            continue
        if slide_id in twins:
            statuses.append(FoundSlide(slide_id, mrxs, False, signature, twins[slide_id]))
            continue
        try:
            check_complete(mrxs)
        except (SlideError, ValueError) as exc:
            statuses.append(FoundSlide(slide_id, mrxs, False, signature, str(exc)))
            continue
        settled = now - newest_mtime(mrxs) >= settle_seconds
        if not settled and previous.get(slide_id) != signature:
            statuses.append(
                FoundSlide(slide_id, mrxs, False, signature, f"{mrxs}: files are still changing")
            )
            continue
        statuses.append(FoundSlide(slide_id, mrxs, True, signature))
    return statuses


def _second_spellings(stems: Sequence[str], name: Callable[[str], str]) -> dict[str, str]:
    """Slide ids that spell one slide (patient and number) another way than a neighbour
    (`_01_` beside `_1_`), each with a reason naming every spelling's file."""
    spellings: dict[SlideId, list[str]] = {}
    for stem in stems:
        try:
            spellings.setdefault(SlideId.parse(stem), []).append(stem)
        except ValueError:
            continue  # reported as a malformed slide id
    reasons: dict[str, str] = {}
    for slide, stems_of_slide in spellings.items():
        if len(stems_of_slide) < 2:
            continue
        files = " and ".join(name(s) for s in sorted(stems_of_slide))
        reason = (
            f"{files}: the same slide (number {slide.number} of its patient) spelled "
            f"{len(stems_of_slide)} ways; rename or remove all but one"
        )
        reasons.update(dict.fromkeys(stems_of_slide, reason))
    return reasons


def _allowed_roots(slides_dir: Path, data_root: Path | None) -> tuple[Path, ...]:
    """Where a slide's files may lie once links are followed: the data root and
    raw/slides, each where it really is (either may itself be a link)."""
    root = Path(data_root) if data_root is not None else slides_dir.parent.parent
    return tuple(dict.fromkeys(p.resolve() for p in (root, slides_dir)))


def _link_problem(mrxs: Path, roots: Sequence[Path]) -> str | None:
    """A symlink loop, or a link out of the data root, at the `.mrxs`, its folder or a
    file in it; None when there is neither."""
    folder = mrxs.with_suffix("")
    paths = [mrxs, folder]
    try:
        if folder.is_dir():
            paths += sorted(folder.iterdir())
    except OSError:
        pass  # a folder that cannot be listed is reported by check_complete
    for path in paths:
        if not path.is_symlink():
            continue
        try:
            target = Path(os.path.realpath(path, strict=True))
        except FileNotFoundError:
            continue  # a dangling link: check_complete says the file does not exist
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{path}: a symlink loop (following the link leads back to it)"
            return f"{path}: cannot follow the symlink ({exc.strerror})"
        if not any(target.is_relative_to(root) for root in roots):
            return (
                f"{path}: a symlink to outside the data root ({roots[0]}); a slide's files "
                "must lie in the data root: copy the slide into raw/slides"
            )
    return None


def _remote_slide_signature(
    slide_id: str, slides: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]
) -> tuple[str, list[str]]:
    from bms_pipeline.core.url_roots import listing_signature

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
) -> list[FoundSlide]:
    """`scan_slides` for a root in object storage, from one listing and without downloading.

    Completeness beyond the presence of Slidedat.ini and Index.dat is checked when the slide
    is staged (by `mrxs_slide`); a slide counts as settled once two scans see the same files.
    """
    previous = previous_signatures or {}
    slides = root.listing("raw/slides")
    overrides = root.listing("overrides")
    statuses: list[FoundSlide] = []
    names = sorted(n for n in slides if n.count("/") == 2 and n.endswith(".mrxs"))
    twins = _second_spellings(
        [PurePosixPath(n).stem for n in names], lambda stem: root.url_of(f"raw/slides/{stem}.mrxs")
    )
    for name in names:
        slide_id = PurePosixPath(name).stem
        url = root.url_of(name)
        signature, names = _remote_slide_signature(slide_id, slides, overrides)
        local = root.local_root / name
        try:
            patient_id_of(slide_id)
        except ValueError as exc:
            statuses.append(FoundSlide(slide_id, local, False, signature, f"{url}: {exc}"))
            continue
        if slide_id in twins:
            statuses.append(FoundSlide(slide_id, local, False, signature, twins[slide_id]))
            continue
        missing = [
            f for f in ("Slidedat.ini", "Index.dat") if f"raw/slides/{slide_id}/{f}" not in names
        ]
        if missing:
            reason = f"{url}: slide folder lacks {', '.join(missing)}"
            statuses.append(FoundSlide(slide_id, local, False, signature, reason))
            continue
        if settle_seconds > 0 and previous.get(slide_id) != signature:
            reason = f"{url}: files are new or still changing"
            statuses.append(FoundSlide(slide_id, local, False, signature, reason))
            continue
        statuses.append(FoundSlide(slide_id, local, True, signature))
    return statuses
