"""The scanned area of a slide, read from OpenSlide's properties in one place.

OpenSlide reports the rectangle of level 0 that the scanner imaged as `openslide.bounds-x`,
`-y`, `-width` and `-height`. The SM series covers exactly that rectangle (its base level is
its size) and the annotations, drawn in level-0 coordinates, are shifted by its offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SlideBounds:
    x: int
    y: int
    width: int
    height: int

    @classmethod
    def of(cls, properties: Mapping[str, str]) -> SlideBounds:
        """The bounds in `properties`; without them, the whole of level 0 from (0, 0)
        (and a size of 0 where even level 0's is unknown)."""

        def number(name: str, default: str) -> int:
            return int(properties.get(f"openslide.bounds-{name}") or default)

        return cls(
            number("x", "0"),
            number("y", "0"),
            number("width", properties.get("openslide.level[0].width", "0")),
            number("height", properties.get("openslide.level[0].height", "0")),
        )

    @property
    def offset(self) -> tuple[int, int]:
        """(x, y) of the scanned area in level 0: what annotation coordinates are shifted by."""
        return (self.x, self.y)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height): what the SM series' base level must be."""
        return (self.width, self.height)
