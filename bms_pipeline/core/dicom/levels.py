"""The levels of a WSM series: one instance each, or a DICOM Concatenation of parts.

A level of more frames than `SmConventions.concatenate_frames` is written as a Concatenation
(PS3.3 C.7.6.16.2.2.4): several instances sharing a ConcatenationUID, numbered by
InConcatenationNumber, each holding NumberOfFrames frames from ConcatenationFrameOffsetNumber
on, in the level's raster order across the parts (TILED_FULL, C.7.6.17.3), so frame
`offset + i` of a part is tile `offset + i` of the level. Our parts also state each frame's
position (TILED_SPARSE, `core.dicom.tiled_sparse`, for the viewers); `WsmLevel.problems`
checks that those positions are that raster order. Everything that reads a level's pixels or
counts levels goes through `levels_of`, so a concatenated level reads exactly as the single
instance it replaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.encaps import generate_frames

from bms_pipeline.core.dicom.files import read_dataset


@dataclass(frozen=True)
class LevelPart:
    """One instance of a level: the whole level, or one part of its Concatenation."""

    path: Path
    sop_instance_uid: str
    frames: int
    frame_offset: int
    """ConcatenationFrameOffsetNumber: the frames the parts before this one hold (0 alone)."""
    number: int | None
    """InConcatenationNumber (None: not concatenated)."""
    total: int | None
    """InConcatenationTotalNumber, where written."""
    concatenation_uid: str | None


@dataclass(frozen=True)
class WsmLevel:
    """A level (or THUMBNAIL, OVERVIEW, LABEL image) and the instances that hold it."""

    flavor: str  # ImageType value 3: VOLUME, THUMBNAIL, OVERVIEW, LABEL
    width: int  # TotalPixelMatrixColumns
    height: int
    tile_width: int  # Columns
    tile_height: int
    tiled_full: bool
    """DimensionOrganizationType TILED_FULL (else the parts state each frame's position)."""
    parts: tuple[LevelPart, ...]
    """In frame order."""

    @property
    def raster_order(self) -> bool:
        """Frames in the level's raster order: TILED_FULL, or our TILED_SPARSE parts (whose
        stated positions `problems` holds to that order)."""
        return self.tiled_full or self.concatenated

    @property
    def path(self) -> Path:
        """The level's first instance (the one a single-instance level is)."""
        return self.parts[0].path

    @property
    def concatenated(self) -> bool:
        return self.parts[0].concatenation_uid is not None

    @property
    def frames(self) -> int:
        return sum(part.frames for part in self.parts)

    @property
    def across(self) -> int:
        return math.ceil(self.width / self.tile_width)

    @property
    def down(self) -> int:
        return math.ceil(self.height / self.tile_height)

    def raster_tiles(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(tile rows, tile columns), from 0, of the level's frames `first` ..
        `first + count - 1` in raster order: along a row, then down."""
        return np.divmod(np.arange(first, first + count), self.across)

    def part_of_frame(self, index: int) -> tuple[LevelPart, int]:
        """The part that holds the level's frame `index` (from 0), and its index there."""
        for part in self.parts:
            if part.frame_offset <= index < part.frame_offset + part.frames:
                return part, index - part.frame_offset
        raise IndexError(f"{self.path}: frame {index + 1} of a level of {self.frames} frames")

    def encapsulated_frames(self) -> Iterator[bytes]:
        """Every frame of the level in order, as stored, one part in memory at a time."""
        for part in self.parts:
            ds = read_dataset(part.path)
            yield from generate_frames(ds.PixelData, number_of_frames=part.frames)
            del ds

    def problems(self) -> list[str]:
        """What makes the parts not one level in raster order: gaps or overlaps between the
        parts' frames, part numbers out of order, a total that disagrees, a frame count
        other than the tile grid's, or a stated frame position off that order."""
        found: list[str] = []
        if self.concatenated:
            offset = 0
            for expected, part in enumerate(self.parts, 1):
                if part.number != expected:
                    found.append(
                        f"{part.path.name}: InConcatenationNumber {part.number}, expected {expected}"
                    )
                if part.frame_offset != offset:
                    found.append(
                        f"{part.path.name}: ConcatenationFrameOffsetNumber {part.frame_offset},"
                        f" expected {offset}"
                    )
                if part.total is not None and part.total != len(self.parts):
                    found.append(
                        f"{part.path.name}: InConcatenationTotalNumber {part.total},"
                        f" but {len(self.parts)} parts"
                    )
                offset += part.frames
        if self.raster_order and self.frames != self.across * self.down:
            found.append(
                f"{self.path.name}: {self.frames} frames in {len(self.parts)} instance(s)"
                f" for a {self.across}x{self.down} tile grid"
            )
        if not self.tiled_full and self.concatenated:
            found += self._position_problems()
        return found

    def _position_problems(self) -> list[str]:
        """Where a part's stated frame positions are not the raster order (the first one
        per part: one is enough to refuse it)."""
        found: list[str] = []
        for part in self.parts:
            columns, rows = stated_positions(part.path)
            if len(columns) != part.frames or len(rows) != part.frames:
                found.append(
                    f"{part.path.name}: {min(len(columns), len(rows))} frame positions"
                    f" for {part.frames} frames"
                )
                continue
            tile_rows, tile_columns = self.raster_tiles(part.frame_offset, part.frames)
            expected_columns = tile_columns * self.tile_width + 1
            expected_rows = tile_rows * self.tile_height + 1
            wrong = np.flatnonzero((columns != expected_columns) | (rows != expected_rows))
            if wrong.size:
                index = int(wrong[0])
                found.append(
                    f"{part.path.name}: frame {index + 1} at column/row"
                    f" {(int(columns[index]), int(rows[index]))}, expected"
                    f" {(int(expected_columns[index]), int(expected_rows[index]))}"
                )
        return found


# Column/RowPositionInTotalImagePixelMatrix (0048,021E/F), SL, in Explicit VR Little Endian.
_POSITION = {
    name: re.compile(rb"\x48\x00" + element + rb"(?:SL|UL)\x04\x00(.{4})", re.DOTALL)
    for name, element in (("column", rb"\x1e\x02"), ("row", rb"\x1f\x02"))
}


def stated_positions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(columns, rows): every frame's stated position in the total pixel matrix, in frame
    order, read off the header's bytes (a full-height level 0 states 82,093; pydicom took
    27 s to walk them as data sets). Our parts are Explicit VR Little Endian (JPEG)."""
    with open(path, "rb") as handle:
        ds = read_dataset(handle, stop_before_pixels=True)
        end = handle.tell()
        syntax = ds.file_meta.TransferSyntaxUID
        if not syntax.is_little_endian or syntax.is_implicit_VR:
            raise ValueError(f"{path}: frame positions are read in Explicit VR Little Endian only")
        handle.seek(0)
        head = handle.read(end)
    columns, rows = (
        np.frombuffer(b"".join(m.group(1) for m in _POSITION[n].finditer(head)), "<i4")
        for n in ("column", "row")
    )
    return columns.astype(np.int64), rows.astype(np.int64)


def levels_of(files: Iterable[Path]) -> list[WsmLevel]:
    """The series' levels, each with its instances: VOLUME levels first from the largest,
    then the other images. Instances sharing a ConcatenationUID make one level."""
    single: list[WsmLevel] = []
    groups: dict[str, list[tuple[LevelPart, WsmLevel]]] = {}
    for path in files:
        ds = read_dataset(path, stop_before_pixels=True)
        image_type = list(ds.get("ImageType", []))
        columns, rows = int(ds.Columns), int(ds.Rows)
        concatenation = ds.get("ConcatenationUID")
        number = ds.get("InConcatenationNumber")
        total = ds.get("InConcatenationTotalNumber")
        part = LevelPart(
            path=Path(path),
            sop_instance_uid=str(ds.SOPInstanceUID),
            frames=int(ds.get("NumberOfFrames", 1)),
            frame_offset=int(ds.get("ConcatenationFrameOffsetNumber", 0)),
            number=None if number is None else int(number),
            total=None if total is None else int(total),
            concatenation_uid=None if concatenation is None else str(concatenation),
        )
        level = WsmLevel(
            flavor=str(image_type[2]) if len(image_type) > 2 else "",
            width=int(ds.get("TotalPixelMatrixColumns", columns)),
            height=int(ds.get("TotalPixelMatrixRows", rows)),
            tile_width=columns,
            tile_height=rows,
            tiled_full=str(ds.get("DimensionOrganizationType", "TILED_FULL")) == "TILED_FULL",
            parts=(part,),
        )
        if part.concatenation_uid is None:
            single.append(level)
        else:
            groups.setdefault(part.concatenation_uid, []).append((part, level))
    for members in groups.values():
        members.sort(key=lambda m: (m[0].frame_offset, m[0].number or 0))
        single.append(replace(members[0][1], parts=tuple(part for part, _ in members)))
    return sorted(
        single, key=lambda lv: (lv.flavor != "VOLUME", -lv.width * lv.height, lv.path.name)
    )


def volume_levels(levels: Sequence[WsmLevel]) -> list[WsmLevel]:
    """The VOLUME levels, largest (base) first."""
    return [level for level in levels if level.flavor == "VOLUME"]
