"""The publication gate: what decides whether a staged series may leave staging.

Every check that decides whether an output may be shared runs here, on the staged files of
the SM and ANN series, before anything is moved into the output root:

- `identifiers`: no byte of any file holds a slide identifier, an identifying MIRAX
  property or (unless dates are kept) the scan date (`PrivacyPolicy`);
- `label`: no LABEL instance, unless the collection includes labels;
- `deidentification`: PatientIdentityRemoved YES and the Basic Application
  Confidentiality Profile (DCM 113100) in DeidentificationMethodCodeSequence, per file;
- `dates`: without `keep_dates`, StudyDate is empty and no SeriesDate is written;
- `thumbnail` (SM): exactly one THUMBNAIL, which correlates with the pyramid.

The severity fits the rule. A privacy, de-identification or conformance problem refuses the
series (`PublicationRefused`): nothing of it is published, and what was published of the
slide before is withdrawn. The THUMBNAIL is an optional object the pipeline makes itself
from the pyramid; a THUMBNAIL problem (`GateProblem.leave_out`) leaves it out of the series,
which is published with a warning, so an optional object never withholds a slide. The asset
checks show the same verdicts in the UI, but they are never the only gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from bms_pipeline.core.collection import DeidentificationPolicy
from bms_pipeline.core.dicom.files import read_dataset
from bms_pipeline.core.dicom.levels import levels_of
from bms_pipeline.core.dicom.phi import PrivacyPolicy
from bms_pipeline.core.dicom.thumbnail import MIN_THUMBNAIL_CORRELATION, thumbnail_similarity

BASIC_PROFILE_CODE = "113100"


@dataclass(frozen=True)
class GateProblem:
    """One broken rule. `leave_out`: the optional instances to drop instead of refusing
    the series (empty: the problem refuses it)."""

    check: str
    detail: str
    leave_out: tuple[Path, ...] = ()
    optional: bool = False
    """The rule is about an optional object: leave out `leave_out` and warn, never refuse."""

    @property
    def refuses(self) -> bool:
        return not self.optional

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


class PublicationRefused(RuntimeError):
    """A staged series failed the publication gate; the message lists every problem."""

    def __init__(self, slide_id: str, series: str, problems: Sequence[GateProblem]) -> None:
        self.slide_id = slide_id
        self.series = series
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(
            f"slide {slide_id}: {series} series not published, {len(self.problems)} "
            f"problem(s): {shown}{more}"
        )


@dataclass(frozen=True)
class PublicationGate:
    """The rules for one slide; `sm_problems` and `ann_problems` judge staged files."""

    privacy: PrivacyPolicy
    deidentification: DeidentificationPolicy
    expect_thumbnail: bool = True

    def sm_problems(self, files: Sequence[Path]) -> list[GateProblem]:
        problems = self._common(files)
        flavors = [_flavor(read_dataset(f, stop_before_pixels=True)) for f in files]
        if not self.deidentification.include_label and "LABEL" in flavors:
            label = files[flavors.index("LABEL")]
            problems.append(
                GateProblem(
                    "label", f"{label.parent.name}/{label.name}: a LABEL instance was written"
                )
            )
        problems += [
            GateProblem("levels", detail)
            for level in levels_of(files)
            for detail in level.problems()
        ]
        if self.expect_thumbnail:
            problems += thumbnail_problems(files, flavors)
        return problems

    def ann_problems(self, files: Sequence[Path]) -> list[GateProblem]:
        return self._common(files)

    def _common(self, files: Sequence[Path]) -> list[GateProblem]:
        problems = [GateProblem("identifiers", hit.describe()) for hit in self.privacy.scan(files)]
        for path in files:
            ds = read_dataset(path, stop_before_pixels=True)
            name = f"{path.parent.name}/{path.name}"
            problems += [
                GateProblem("deidentification", f"{name}: {p}") for p in _deid_problems(ds)
            ]
            if not self.deidentification.keep_dates:
                problems += [GateProblem("dates", f"{name}: {p}") for p in _date_problems(ds)]
        return problems


def thumbnail_problems(files: Sequence[Path], flavors: Sequence[str]) -> list[GateProblem]:
    """The THUMBNAIL rule (optional: a problem leaves the THUMBNAIL out, with a warning):
    exactly one, and it correlates with the pyramid at or above its own resolution
    (`core.dicom.thumbnail.thumbnail_similarity`)."""
    thumbnails = tuple(
        Path(f) for f, flavor in zip(files, flavors, strict=True) if flavor == "THUMBNAIL"
    )
    if len(thumbnails) != 1:
        return [
            GateProblem(
                "thumbnail",
                f"{len(thumbnails)} THUMBNAIL instances, expected 1; the series is published "
                "without a THUMBNAIL",
                leave_out=thumbnails,
                optional=True,
            )
        ]
    score, compared = thumbnail_similarity(files)
    if score is not None and score >= MIN_THUMBNAIL_CORRELATION:
        return []
    why = (
        compared
        if score is None
        else f"{compared}: correlation {score:.3f} below {MIN_THUMBNAIL_CORRELATION}"
    )
    return [
        GateProblem(
            "thumbnail", f"{why}; the THUMBNAIL is left out", leave_out=thumbnails, optional=True
        )
    ]


def _flavor(ds: Dataset) -> str:
    return str(ds.ImageType[2]) if len(ds.get("ImageType", [])) > 2 else ""


def _deid_problems(ds: Dataset) -> list[str]:
    problems: list[str] = []
    if ds.get("PatientIdentityRemoved") != "YES":
        problems.append("PatientIdentityRemoved is not YES")
    codes = {
        str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])
    }
    if BASIC_PROFILE_CODE not in codes:
        problems.append("DeidentificationMethodCodeSequence lacks DCM 113100")
    return problems


def _date_problems(ds: Dataset) -> list[str]:
    problems: list[str] = []
    if ds.get("StudyDate"):
        problems.append("StudyDate is set although dates are not kept")
    if ds.get("SeriesDate"):
        problems.append("SeriesDate is set although dates are not kept")
    return problems
