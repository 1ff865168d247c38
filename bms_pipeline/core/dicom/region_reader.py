"""The one interface through which the converter reads slide pixels beside OpenSlide.

`core.dicom.fast_source` asks a `RegionReader` for each tile's pixels and falls back to
OpenSlide where the reader refuses. The contract: a reader returns exactly the buffer
OpenSlide's `openslide_read_region` fills for the same arguments (premultiplied BGRA,
(x, y) in level-0 pixels, size in level pixels), or raises `ReadRefused`; it never returns
other pixels. `supports_level` promises that the reads a DICOM conversion makes of a level
(origins at the slide bounds plus whole level pixels) are not refused.

`open_mirax_reader` opens the only implementation the converter uses, the direct MIRAX
reader (`core.mirax.direct`); `OpenSlideRegionReader` is OpenSlide itself behind the same
interface, the contract's reference (bms_pipeline_tests/core/test_region_reader_contract.py
holds every slide of ../shared/corpus/mirax/ to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from openslide import OpenSlide

from bms_pipeline.core.dicom.wsidicomizer_seam import read_premultiplied_bgra
from bms_pipeline.core.mirax.direct import MiraxDirectReader, MiraxDirectUnsupported

__all__ = ["OpenSlideRegionReader", "ReadRefused", "RegionReader", "open_mirax_reader"]

ReadRefused = MiraxDirectUnsupported
"""A read (or a whole slide, at opening) the reader cannot reproduce exactly: read it through
OpenSlide instead. The message names the file and the reason."""


class RegionReader(Protocol):
    """Pixels of a slide's levels, byte for byte as OpenSlide's `read_region` buffer."""

    def supports_level(self, level: int) -> bool:
        """True when a conversion's reads of `level` are never refused."""
        ...

    def unsupported_reason(self, level: int) -> str | None:
        """Why `level` is not supported (None when it is)."""
        ...

    def read_bgra(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The (height, width, 4) premultiplied BGRA of the region, or `ReadRefused`."""
        ...

    def close(self) -> None: ...


def open_mirax_reader(mrxs_path: Path, cache_bytes: int) -> RegionReader:
    """The direct MIRAX reader of `mrxs_path` with a decoded-image cache of `cache_bytes`;
    `ReadRefused` when it cannot reproduce OpenSlide for the slide."""
    return MiraxDirectReader.open(mrxs_path, cache_bytes=cache_bytes)


class OpenSlideRegionReader:
    """OpenSlide as a `RegionReader`: every level supported, nothing refused."""

    def __init__(self, path: Path) -> None:
        self._slide = OpenSlide(str(path))

    def supports_level(self, level: int) -> bool:
        return 0 <= level < self._slide.level_count

    def unsupported_reason(self, level: int) -> str | None:
        return None if self.supports_level(level) else f"level {level} does not exist"

    def read_bgra(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return read_premultiplied_bgra(self._slide, level, x, y, width, height)

    def close(self) -> None:
        self._slide.close()
