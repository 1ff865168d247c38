"""BMDeep's SeriesNumber scheme: every series of a slide, numbered once, here.

IDC numbers a slide's series SM 1, ROIs 33, annotation session k 33 + k, consensus 42 and
model detections 43. Two defects are corrected, and say why:

- session 0 would reuse the ROI series' 33: a number already taken moves to the first free
  one (44, 45, ...);
- every slide of a patient lies in the patient's one study, so slide n of a patient adds
  `(n - 1) * slide_stride` (slide 2 numbers SM 101, ROIs 133, ...).

The SM series and the ANN series take their numbers from the same call, so they can never
disagree about which numbers are taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bms_pipeline.core.slide_id import SlideId


class ConventionError(ValueError):
    """A convention setting that cannot hold; the message names the setting."""


@dataclass(frozen=True)
class SeriesNumbering:
    """SeriesNumbers of one slide's series, unique within the patient's study.

    A series takes its preferred number; one that is already taken (IDC's session 0 would
    reuse the ROI series' 33) gets the first free number from `first_free`. Slide n of a
    patient adds `(n - 1) * slide_stride`, so a second slide never collides with the first.
    """

    sm: int = 1
    rois: int = 33
    session_base: int = 33
    """Session k prefers `session_base + k` (IDC: 33 + k)."""
    consensus: int = 42
    unlabeled: int = 42
    detections: int = 43
    first_free: int = 44
    slide_stride: int = 100

    def for_slide(self, slide: SlideId | str, series: Sequence[str]) -> dict[str, int]:
        """Number of each series name (`sm`, `rois`, `session_<k>`, `consensus`,
        `unlabeled`, `detections`), in the order given; raises past `slide_stride`.

        The numbers are computed beside the SM series', whether or not `series` names it."""
        slide = slide if isinstance(slide, SlideId) else SlideId.parse(slide)
        offset = (slide.number - 1) * self.slide_stride
        names = list(series)
        series = names if "sm" in names else ["sm", *names]
        # Fixed series first (IDC's numbers), then sessions in order: session 0 moves.
        ranked = sorted(
            series, key=lambda name: (name.startswith("session_"), session_number(name))
        )
        taken: dict[str, int] = {}
        used: set[int] = set()
        spare = self.first_free
        for name in ranked:
            number = self._preferred(name)
            if number in used:
                while spare in used:
                    spare += 1
                number = spare
            if number >= self.slide_stride:
                raise ConventionError(
                    f"SeriesNumber {number} for {name} would reach the next slide's numbers "
                    f"(slide_stride {self.slide_stride})"
                )
            used.add(number)
            taken[name] = number
        return {name: taken[name] + offset for name in names}

    def _preferred(self, name: str) -> int:
        if name.startswith("session_"):
            return self.session_base + session_number(name)
        try:
            return int(getattr(self, name))
        except AttributeError:
            raise ConventionError(f"no SeriesNumber rule for series {name!r}") from None


def session_number(name: str) -> int:
    """`session_<k>` -> k; -1 for the fixed series (they rank first)."""
    return int(name.removeprefix("session_")) if name.startswith("session_") else -1
