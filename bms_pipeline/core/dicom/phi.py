"""The privacy policy of one slide: what may reach the output, and a byte scan that proves it.

Header checks only see the attributes one thinks of; the bytes also cover private tags,
ICC profiles, pixel data and anything a library adds. So every output file is scanned,
byte for byte, for:

- the MIRAX `SLIDE_ID` and `SLIDE_NAME` (which can carry a patient name), whatever they
  look like, and every other identifying-looking `mirax.GENERAL.*` property outside
  `ALLOWED_MIRAX_PROPERTIES`;
- unless the collection keeps dates, the scan date `SLIDE_CREATIONDATETIME` as MIRAX writes
  it and in the DICOM DA and DT forms (`YYYYMMDD`, `YYYYMMDDHHMMSS`).

Values the output must carry (the slide id, the patient id, the collection's own names) are
never leaks, even where a MIRAX property equals them or is part of them: real scanners often
write the slide id as SLIDE_NAME. A property equal to such a value is not scanned for; an
occurrence of a shorter property inside an occurrence of such a value is excused.

Hits name the property, the file and the byte offset, never the value (which is the PHI).

The same policy strips before it scans, so what is removed and what is searched for cannot
drift apart: `strip_identifying_metadata` removes what wsidicomizer would carry from the file
(it turns SLIDE_NAME into SeriesDescription and SLIDE_ID into ContainerIdentifier; the label
text and barcode; by policy the scan dates of every image), `allowed_properties` is the only
door from MIRAX properties to a header, `apply_date_policy` clears the dates a post-processor
sees, and `shown_properties` is what the UI, the event log, run tags and asset metadata may
show: the same allow-list, nothing else, whatever a property is called (a scanner can write a
patient's name into SLIDE_BARCODE, PROJECT_NAME, SLIDE_LABEL, SLIDE_COMMENT, ... as well as into
SLIDE_NAME, so a list of what to hide is never complete).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the UI's checks import this module; wsidicomizer loads in the steps only
    from pydicom import Dataset
    from wsidicomizer.metadata import WsiDicomizerMetadata  # pyright: ignore[reportMissingTypeStubs]

# MIRAX properties that may pass into DICOM headers (through wsidicomizer's MIRAX
# metadata or ours). Everything else, SLIDE_ID and SLIDE_NAME above all, stays out.
ALLOWED_MIRAX_PROPERTIES = frozenset(
    {
        "mirax.GENERAL.OBJECTIVE_MAGNIFICATION",
        "mirax.GENERAL.SCANNER_HARDWARE_VERSION",
        "mirax.GENERAL.SCANNER_SOFTWARE_VERSION",
        "mirax.GENERAL.SCANNER_HARDWARE_ID",
        "mirax.GENERAL.SCANNING_TIME_IN_SEC",
        "openslide.mpp-x",
        "openslide.mpp-y",
        "openslide.objective-power",
        "openslide.bounds-x",
        "openslide.bounds-y",
        "openslide.bounds-width",
        "openslide.bounds-height",
        "openslide.background-color",
    }
)

SLIDE_ID_PROPERTY = "mirax.GENERAL.SLIDE_ID"
SLIDE_NAME_PROPERTY = "mirax.GENERAL.SLIDE_NAME"
CREATION_DATETIME_PROPERTY = "mirax.GENERAL.SLIDE_CREATIONDATETIME"
MIRAX_DATETIME_FORMAT = "%d/%m/%Y %H:%M:%S"

ALWAYS_SCANNED = (SLIDE_ID_PROPERTY, SLIDE_NAME_PROPERTY)
"""Scanned for whatever they look like (4 characters or more)."""

LABEL_TEXT_PROPERTIES = ("openslide.barcode",)
"""The label's text as a reader gives it (OpenSlide's barcode), where a format has one."""

MIN_NEEDLE_LENGTH = 6
"""Any other value is scanned for if it is this long and holds a letter: shorter or
letter-free values ("1", "ok", "40", "01.02", a count) occur in correct outputs by chance."""


def looks_identifying(value: str) -> bool:
    """Whether a value outside the allow-list is worth scanning for (see MIN_NEEDLE_LENGTH)."""
    value = value.strip()
    return len(value) >= MIN_NEEDLE_LENGTH and any(c.isalpha() for c in value)


_CHUNK = 4 << 20  # larger windows cost polars far more memory: +250 MiB peak at 16 MiB, measured


def allowed_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The MIRAX properties that may reach a DICOM header, in key order."""
    return {k: v for k, v in sorted(properties.items()) if k in ALLOWED_MIRAX_PROPERTIES}


def shown_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The properties the UI, the event log, run tags and asset metadata may show: exactly
    those that may reach the DICOM (an allow-list; every other property stays unseen)."""
    return allowed_properties(properties)


def strip_identifying_metadata(
    metadata: WsiDicomizerMetadata, keep_dates: bool
) -> WsiDicomizerMetadata:
    """The file's metadata without the slide name, the scanner's slide id, the label's text
    and barcode and (unless dates are kept) the study date and every image's scan date."""
    stripped = replace(
        metadata,
        series=replace(metadata.series, description=None),
        slide=replace(metadata.slide, identifier=None),
        label=replace(metadata.label, text=None, barcode=None),
    )
    if keep_dates:
        return stripped
    # Every image of the slide: the pyramid, the overview and the label.
    return replace(
        stripped,
        study=replace(stripped.study, date=None, time=None),
        pyramid=_undated(stripped.pyramid),
        overview=_undated(stripped.overview),
        label=_undated(stripped.label),
    )


def _undated(module: Any) -> Any:
    """The pyramid, overview or label without its image's acquisition date and time."""
    if module is None or module.image is None:
        return module
    return replace(module, image=replace(module.image, acquisition_datetime=None))


def apply_date_policy(dataset: Dataset, keep_dates: bool) -> None:
    """Kept: the scan is the series, so SeriesDate/Time follow StudyDate/Time (from
    SLIDE_CREATIONDATETIME). Not kept: StudyDate/Time present and empty (Type 2), SeriesDate/
    Time absent."""
    if keep_dates:
        if dataset.get("StudyDate"):
            dataset.SeriesDate = dataset.StudyDate
            dataset.SeriesTime = dataset.get("StudyTime", "")
        return
    for keyword in ("StudyDate", "StudyTime"):
        if keyword in dataset:
            setattr(dataset, keyword, "")
    for keyword in ("SeriesDate", "SeriesTime"):
        if keyword in dataset:
            delattr(dataset, keyword)


@dataclass(frozen=True)
class Needle:
    """One value that must not appear: `name` says which property (and form) it is."""

    name: str
    value: bytes
    whole_token: bool = False
    """Only an occurrence between two bytes that are not ASCII letters or digits counts (for
    digits-only values the audit searches a whole instance for: an 8-digit date occurs by
    chance inside hex hashes and timestamps, not as a token of its own)."""


@dataclass(frozen=True)
class IdentifierHit:
    file: Path
    name: str
    offset: int

    def describe(self) -> str:
        """Names the series folder and file, the offset and the property, not the value."""
        return f"{self.file.parent.name}/{self.file.name}: byte {self.offset}: holds {self.name}"


def scan_date_forms(raw: str) -> dict[str, str]:
    """The MIRAX scan date as MIRAX writes it and as DICOM DA and DT values."""
    raw = raw.strip()
    try:
        when = datetime.strptime(raw, MIRAX_DATETIME_FORMAT)
    except ValueError:
        return {"": raw} if len(raw) >= 6 else {}
    return {"": raw, " (DA)": when.strftime("%Y%m%d"), " (DT)": when.strftime("%Y%m%d%H%M%S")}


@dataclass(frozen=True)
class PrivacyPolicy:
    """What the output of one slide must not hold (`needles`) and must hold (`allowed`)."""

    needles: tuple[Needle, ...]
    allowed: tuple[bytes, ...] = ()
    excused: tuple[str, ...] = ()
    """Properties not scanned for because they equal a value the output must carry."""

    @classmethod
    def for_slide(
        cls,
        properties: Mapping[str, str],
        allowed_values: Iterable[str] = (),
        keep_dates: bool = False,
        keep_slide_id: bool = False,
    ) -> PrivacyPolicy:
        allowed = tuple(sorted({v.strip() for v in allowed_values if len(v.strip()) >= 4}))
        candidates: dict[str, str] = {}
        for key in ALWAYS_SCANNED:
            if key == SLIDE_ID_PROPERTY and keep_slide_id:
                continue
            value = (properties.get(key) or "").strip()
            if len(value) >= 4:
                candidates[key] = value
        for key, raw in sorted(properties.items()):
            value = (raw or "").strip()
            if (
                (key.startswith("mirax.GENERAL.") or key in LABEL_TEXT_PROPERTIES)
                and key not in ALLOWED_MIRAX_PROPERTIES
                and key not in candidates
                and key != CREATION_DATETIME_PROPERTY
                and not (key == SLIDE_ID_PROPERTY and keep_slide_id)
                and looks_identifying(value)
            ):
                candidates[key] = value
        if not keep_dates:
            for suffix, value in scan_date_forms(
                properties.get(CREATION_DATETIME_PROPERTY) or ""
            ).items():
                candidates[CREATION_DATETIME_PROPERTY + suffix] = value
        needles = tuple(
            Needle(name, value.encode("utf-8"))
            for name, value in candidates.items()
            if value not in allowed
        )
        excused = tuple(name for name, value in candidates.items() if value in allowed)
        return cls(needles, tuple(a.encode("utf-8") for a in allowed), excused)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.needles]

    def scan(self, files: Iterable[Path]) -> list[IdentifierHit]:
        """The first occurrence, per file and needle, that no allowed value excuses."""
        hits: list[IdentifierHit] = []
        for path in files:
            hits += self._scan_file(Path(path))
        return hits

    def excuses(self, needle: bytes) -> list[tuple[bytes, list[int]]]:
        """Allowed values that contain `needle`, with every position it has in them."""
        out: list[tuple[bytes, list[int]]] = []
        for value in self.allowed:
            positions = [
                i for i in range(len(value) - len(needle) + 1) if value.startswith(needle, i)
            ]
            if positions:
                out.append((value, positions))
        return out

    def _scan_file(self, path: Path) -> list[IdentifierHit]:
        """Chunk by chunk over the file mapped into memory (no copy but the chunk polars
        searches; the pages of the chunks done handed back): `find` places the needles
        `_occur` reports, and each occurrence is judged against the whole file around it."""
        if not self.needles or path.stat().st_size == 0:
            return []
        excuses = {n.name: self.excuses(n.value) for n in self.needles}
        overlap = max(len(n.value) for n in self.needles) - 1
        hits: list[IdentifierHit] = []
        seen: set[str] = set()
        released = 0  # the mapped pages before this offset are handed back
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            for start in range(0, len(data), _CHUNK):
                released = _release_pages(data, released, start)
                end = start + _CHUNK  # judged here: the occurrences starting before `end`
                active = [n for n in self.needles if n.name not in seen]
                if not active:
                    break
                window = data[start : end + overlap]
                for needle, present in zip(active, _occur(window, active), strict=True):
                    if not present:
                        continue  # what `find` below would conclude, at memmem's speed
                    # Bounded to the occurrences starting in this chunk.
                    stop = end + len(needle.value) - 1
                    at = data.find(needle.value, start, stop)
                    while at >= 0:
                        if not self.is_excused(data, at, excuses[needle.name]) and not inside_token(
                            data, at, needle
                        ):
                            seen.add(needle.name)
                            hits.append(IdentifierHit(path, needle.name, at))
                            break
                        at = data.find(needle.value, at + 1, stop)
        return hits

    @staticmethod
    def is_excused(
        data: bytes | mmap.mmap, at: int, excuses: list[tuple[bytes, list[int]]]
    ) -> bool:
        for value, positions in excuses:
            for p in positions:
                start = at - p
                if start >= 0 and data[start : start + len(value)] == value:
                    return True
        return False


_ALNUM = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def inside_token(data: bytes | mmap.mmap, at: int, needle: Needle) -> bool:
    """A `whole_token` needle's occurrence that touches a letter or digit (part of a longer
    token, e.g. a hash), which does not count."""
    if not needle.whole_token:
        return False
    end = at + len(needle.value)
    before = data[at - 1] if at > 0 else None
    after = data[end] if end < len(data) else None
    return before in _ALNUM or after in _ALNUM


def _release_pages(data: mmap.mmap, released: int, offset: int) -> int:
    """Hand the pages of `data` read before `offset` back to the page cache: a mapped file's
    pages count in the process's resident memory once touched (a whole 111 MB level, seen as
    peak RSS), though the kernel can drop them. Returns the new release boundary."""
    boundary = offset - offset % mmap.PAGESIZE
    if boundary > released and hasattr(mmap, "MADV_DONTNEED"):
        data.madvise(mmap.MADV_DONTNEED, released, boundary - released)
        return boundary
    return released


MANY_NEEDLES = 32
"""From this many needles on, one Aho-Corasick pass replaces a memmem pass per needle:
measured on 64 MB of random bytes, memmem runs at about 3,500 MB/s divided by the needles
(10: 351 MB/s), Aho-Corasick at 108 MB/s whatever their number (2,001 needles)."""


def _occur(window: bytes, needles: Sequence[Needle]) -> list[bool]:
    """Whether each needle occurs anywhere in `window`, by polars' memmem search (SIMD, on
    its own threads, without the GIL): about 4x the speed of `bytes.find` on JPEG data,
    measured. `find` then runs only for the needles it reports, to place and judge them.
    Many needles (a whole collection's, for the audit) take one Aho-Corasick pass instead."""
    import polars as pl

    if not needles:
        return []
    if len(needles) >= MANY_NEEDLES:
        # Latin-1 maps each byte to one character, so a byte needle occurs in the bytes
        # exactly where its Latin-1 text occurs in their Latin-1 text.
        patterns = [n.value.decode("latin-1") for n in needles]
        found = pl.Series([window.decode("latin-1")]).str.extract_many(patterns, overlapping=True)[
            0
        ]
        present: set[str] = set(found.to_list()) if found is not None else set()
        return [p in present for p in patterns]
    frame = pl.DataFrame({"window": pl.Series([window], dtype=pl.Binary)})
    row = frame.select(
        pl.col("window").bin.contains(n.value).alias(str(i)) for i, n in enumerate(needles)
    ).row(0)
    return [bool(found) for found in row]


def allowed_values(slide_id: str, patient_id: str, names: Iterable[str]) -> list[str]:
    """The values every output of the slide carries on purpose."""
    return [slide_id, patient_id, *names]


def identifiers_of(properties: Mapping[str, str]) -> dict[str, str]:
    """Needle values by short property name (for tests and the UI), without dates."""
    policy = PrivacyPolicy.for_slide(properties, keep_dates=True)
    return {n.name.removeprefix("mirax.GENERAL."): n.value.decode() for n in policy.needles}


def scan_files(files: Iterable[Path], identifiers: Mapping[str, str]) -> list[IdentifierHit]:
    """Every first occurrence (per file and identifier) of any identifier in any file."""
    policy = PrivacyPolicy(tuple(Needle(k, v.encode("utf-8")) for k, v in identifiers.items()))
    return policy.scan(files)
