"""Convert one MIRAX slide to a DICOM VL Whole Slide Microscopy series with wsidicomizer.

wsidicomizer does not refuse an existing output folder, so old and new files would mix:
the series is written into a fresh staging folder on the output filesystem, made
byte-deterministic (`core.dicom.determinism`), judged by the publication gate
(`core.dicom.publication`) and moved into place only when complete and passed. A failed
run leaves the previous good series, or nothing; a refused one leaves nothing. An optional
instance the gate finds wrong (the THUMBNAIL) is left out and the series published with a
warning (`ConversionResult.warnings`).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset
from wsidicom.codec import JpegSettings  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata import WsiMetadata  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.options import ConcatenationByFrames  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer import WsiDicomizer  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.metadata import WsiDicomizerMetadata  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.wsidicomizer import SourceIdentifier  # pyright: ignore[reportMissingTypeStubs]

from bms_pipeline.core.atomic_outputs import replace_dir_atomically
from bms_pipeline.core.conventions import SmConventions
from bms_pipeline.core.dicom.determinism import contributing_equipment, normalize_series
from bms_pipeline.core.dicom.fast_source import (
    FastOpenSlideSource,
    LevelReads,
    OpenSlideReadSource,
    ReaderLog,
    recording_reads,
)
from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicom.publication import GateProblem, PublicationRefused
from bms_pipeline.core.dicom.tiled_sparse import make_concatenations_sparse
from bms_pipeline.core.dicom.uids import SlideUidGenerator
from bms_pipeline.core.heap import release_freed_heap

if TYPE_CHECKING:
    from upath import UPath

logger = logging.getLogger(__name__)

MetadataPostProcessor = Callable[[Dataset, WsiMetadata], Dataset]
MetadataPreProcessor = Callable[[WsiDicomizerMetadata], WsiMetadata]
Gate = Callable[[Sequence[Path]], Sequence[GateProblem]]


@dataclass(frozen=True)
class ConversionSettings:
    """Output settings: JPEG q80 as wsidicomizer's CLI; 1024 px tiles and even levels as IDC
    published BMDeep (`core.conventions.SmConventions`, which `for_collection` reads)."""

    tile_size: int = 1024
    jpeg_quality: int = 80
    workers: int | None = None
    chunk_size: int | None = 16
    """Tiles per batch of wsidicom's source reads (a horizontal run). wsidicom 0.36 keeps the
    future of every batch until the level is written, about 1 KiB each: with its default of
    2 tiles a batch, that grew the job by about 80 MiB over a full-height slide's 82,093
    level-0 tiles. The same bytes and speed with 16 (measured on the `wide` slide)."""
    include_label: bool = False
    include_overview: bool = True
    include_levels: tuple[int, ...] | None = (0, 2, 4, 6, 8, 10)
    """Pyramid levels kept, those that exist (None: all)."""
    concatenate_frames: int | None = None
    """Split each level into a Concatenation of at most this many frames
    (`SmConventions.concatenate_frames`); None: one instance per level."""
    include_thumbnail: bool = True
    """A THUMBNAIL rendered from the pyramid (`core.dicom.thumbnail`); with the stock
    source (`fast_composite=False`) wsidicomizer's copy of the MIRAX preview instead."""
    offset_table: str = "eot"
    fast_composite: bool = True
    """Read through `FastOpenSlideSource` (bit-identical output, cheaper compositing)."""
    direct_mirax: bool = True
    """With `fast_composite`, read MIRAX pixels with `MiraxDirectReader` where it reproduces
    OpenSlide exactly (same output, fewer decodes)."""

    @classmethod
    def for_collection(cls, sm: SmConventions, **changes: object) -> ConversionSettings:
        """The collection's SM conventions (tile size, levels, THUMBNAIL), then `changes`."""
        base = cls(
            tile_size=sm.tile_size,
            include_levels=sm.levels,
            include_thumbnail=sm.thumbnail,
            concatenate_frames=sm.concatenate_frames,
        )
        return replace(base, **changes)

    def present_levels(self, mrxs_path: Path) -> list[int] | None:
        """The kept levels that the slide has (IDC's list names levels up to 10)."""
        if self.include_levels is None:
            return None
        import openslide

        with openslide.OpenSlide(str(mrxs_path)) as slide:
            count = slide.level_count
        release_freed_heap()  # OpenSlide's tile map, just freed (`core.heap`)
        present = [level for level in self.include_levels if level < count]
        return present or [0]


@dataclass(frozen=True)
class SlideIdentity:
    collection_id: str
    patient_id: str
    slide_id: str
    content_key: str = ""
    """The version of the series' content (`core.versions.sm_version`), part of its UIDs."""
    frame_key: str = ""
    """The version of the slide's files, part of its frame of reference UID."""


@dataclass(frozen=True)
class ConversionResult:
    sm_dir: Path
    files: tuple[Path, ...]
    seconds: float
    total_bytes: int
    base_width: int
    base_height: int
    warnings: tuple[str, ...] = ()
    """Optional instances the publication gate left out, and why."""
    readers: tuple[LevelReads, ...] = ()
    """Which reader served each converted level, and why it fell back to OpenSlide."""
    openslide_handle: dict[str, object] | None = None
    """Whether OpenSlide's handle (and its tile map) was released while the tiles were
    written, and how often refused reads opened it again (None: kept open throughout)."""

    @property
    def base_megapixels(self) -> float:
        return self.base_width * self.base_height / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.base_megapixels / self.seconds if self.seconds > 0 else float("nan")


class ConversionError(RuntimeError):
    """Conversion failed; the message names the slide and the reason."""


def convert_slide(
    mrxs_path: Path,
    sm_dir: Path,
    staging_root: Path,
    identity: SlideIdentity,
    metadata: WsiMetadata | None = None,
    metadata_post_processor: MetadataPostProcessor | None = None,
    metadata_pre_processor: MetadataPreProcessor | None = None,
    settings: ConversionSettings = ConversionSettings(),
    gate: Gate | None = None,
) -> ConversionResult:
    """Convert `mrxs_path` into `sm_dir`, replacing it only on success and only when `gate`
    finds no problem in the staged files (else `PublicationRefused`)."""
    staging_root.mkdir(parents=True, exist_ok=True)
    scratch = staging_root / f"{identity.slide_id}-sm-{uuid.uuid4().hex[:8]}"
    target = scratch / "sm"
    started = time.perf_counter()
    log = ReaderLog(_reader_note(settings))
    try:
        levels = settings.present_levels(mrxs_path)
        log.written_levels = None if levels is None else frozenset(levels)
        with recording_reads(log):
            files = _convert(
                mrxs_path,
                target,
                identity,
                metadata,
                metadata_post_processor,
                metadata_pre_processor,
                settings,
                levels,
            )
        seconds = time.perf_counter() - started
        # The decoded-image cache and the tiles, freed by the writer threads in arenas of
        # their own, would stay resident under the publication gate's reads: 1,067 MiB
        # at its peak on the full-height slide, against 914 at the end of the writing.
        release_freed_heap()
        written = sorted(Path(str(f)) for f in files)
        if not written:
            raise ConversionError(f"{mrxs_path}: wsidicomizer wrote no files")
        make_concatenations_sparse(written)
        base_width, base_height = _base_size(written)
        normalize_series(written)
        problems = list(gate(written)) if gate is not None else []
        refusing = [p for p in problems if p.refuses]
        if refusing:
            raise PublicationRefused(identity.slide_id, "SM", refusing)
        written, warnings = _leave_out(written, problems)
        replace_dir_atomically(target, sm_dir)
    except (ConversionError, PublicationRefused):
        raise
    except Exception as exc:
        raise ConversionError(
            f"{mrxs_path}: conversion of slide {identity.slide_id} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    final_files = tuple(sm_dir / f.name for f in written)
    for warning in warnings:
        logger.warning("slide %s: %s", identity.slide_id, warning)
    return ConversionResult(
        sm_dir=sm_dir,
        files=final_files,
        seconds=seconds,
        total_bytes=sum(f.stat().st_size for f in final_files),
        base_width=base_width,
        base_height=base_height,
        warnings=tuple(warnings),
        readers=log.levels(),
        openslide_handle=log.openslide_handle.summary() if log.openslide_handle else None,
    )


def _reader_note(settings: ConversionSettings) -> str | None:
    """Why no level can be read directly, whatever the slide."""
    if not settings.fast_composite:
        return "wsidicomizer's stock OpenSlide source (settings.fast_composite is off)"
    if not settings.direct_mirax:
        return "the direct MIRAX reader is turned off (settings.direct_mirax)"
    return None


def _leave_out(
    written: list[Path], problems: Sequence[GateProblem]
) -> tuple[list[Path], list[str]]:
    """Drop the optional instances the gate found wrong and renumber the rest; the
    warnings say what was left out and why."""
    dropped = {path for problem in problems for path in problem.leave_out}
    for path in dropped:
        path.unlink()
    kept = [path for path in written if path not in dropped]
    if dropped:
        normalize_series(kept)
    return kept, [str(problem) for problem in problems]


def _convert(
    mrxs_path: Path,
    target: Path,
    identity: SlideIdentity,
    metadata: WsiMetadata | None,
    metadata_post_processor: MetadataPostProcessor | None,
    metadata_pre_processor: MetadataPreProcessor | None,
    settings: ConversionSettings,
    levels: list[int] | None,
) -> list[UPath]:
    # wsidicomizer annotates `encoding` with a bare generic `Encoder`.
    return WsiDicomizer.convert(  # pyright: ignore[reportUnknownMemberType]
        mrxs_path,
        target,
        metadata=metadata,
        default_metadata=WsiDicomizerMetadata(contributing_equipment=[contributing_equipment()]),
        tile_size=settings.tile_size,
        uid_generator=SlideUidGenerator(
            identity.collection_id,
            identity.patient_id,
            identity.slide_id,
            content_key=identity.content_key,
            frame_key=identity.frame_key,
        ),
        include_levels=levels,
        include_label=settings.include_label,
        include_overview=settings.include_overview,
        include_thumbnail=settings.include_thumbnail,
        metadata_post_processor=metadata_post_processor,
        metadata_pre_processor=metadata_pre_processor,
        workers=settings.workers,
        chunk_size=settings.chunk_size,
        encoding=JpegSettings(quality=settings.jpeg_quality),
        offset_table=settings.offset_table,
        concatenation=(
            None
            if settings.concatenate_frames is None
            else ConcatenationByFrames(settings.concatenate_frames)
        ),
        preferred_source=(
            (FastOpenSlideSource if settings.direct_mirax else OpenSlideReadSource)
            if settings.fast_composite
            else SourceIdentifier.OPENSLIDE
        ),
    )


def _base_size(files: list[Path]) -> tuple[int, int]:
    best = (0, 0)
    for path in files:
        ds = read_dataset(path, stop_before_pixels=True)
        if "VOLUME" in ds.ImageType:
            size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
            best = max(best, size, key=lambda s: s[0] * s[1])
    return best
