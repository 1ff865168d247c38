"""Releases, the IDC way: every change to what is published is a numbered release.

IDC identifies each version of a series separately from its DICOM UID (`crdc_series_uuid`),
records in idc-index when a series was first published (`series_init_idc_version`) and last
revised (`series_revised_idc_version`), and lists the versions it no longer serves in
`prior_versions_index`. Here a changed series gets a new SeriesInstanceUID (its UIDs follow
its content), so a revision is a new UID in the same place of the collection: the same slide
and the same role (`sm`, `ann/consensus`...). The ledger (`out/releases/ledger.json`) carries
the history from run to run; the tables are made from it:

- `bms_releases`: one row per release (number, date, code version, what changed);
- `bms_series_releases`: every published series with the release that first published its
  place and the one that published this version;
- `bms_prior_versions_index`: the versions no longer published, with idc-index-data's
  `prior_versions_index` columns where they apply, plus the version that superseded each.

idc-index's own `series_init_idc_version` and `series_revised_idc_version` stay null in
`index`: they name IDC's releases, which only IDC assigns.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

UUID_NAMESPACE = uuid.UUID("6f1c3a52-1d2b-4c1e-9a55-3b7e0d4c2a10")
"""Namespace of our series version identifiers (uuid5 of the SeriesInstanceUID)."""


@dataclass(frozen=True)
class PublishedSeries:
    """A series as published now (from the index tables)."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    slide_id: str
    role: str
    """`sm` or `ann/<name>`: the series' place in the collection, kept across revisions."""
    size_mb: float

    @property
    def place(self) -> str:
        return f"{self.slide_id}/{self.role}"


@dataclass(frozen=True)
class SeriesRecord:
    series: PublishedSeries
    init_release: int
    revised_release: int


@dataclass(frozen=True)
class PriorVersion:
    series: PublishedSeries
    min_release: int
    max_release: int
    superseded_by: str | None


@dataclass(frozen=True)
class Release:
    number: int
    date: str
    code_version: str
    added: int
    revised: int
    removed: int
    tables_changed: tuple[str, ...]


@dataclass(frozen=True)
class Ledger:
    releases: tuple[Release, ...] = ()
    current: Mapping[str, SeriesRecord] = field(default_factory=dict[str, SeriesRecord])
    prior: tuple[PriorVersion, ...] = ()
    tables: Mapping[str, str] = field(default_factory=dict[str, str])
    """Table name -> content digest as of the last release."""

    @property
    def last(self) -> int:
        return self.releases[-1].number if self.releases else 0

    # -- persistence ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "releases": [asdict(r) for r in self.releases],
                "current": [asdict(r) for r in self.current.values()],
                "prior": [asdict(p) for p in self.prior],
                "tables": dict(sorted(self.tables.items())),
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        raw = json.loads(text)
        current: dict[str, SeriesRecord] = {}
        for r in raw.get("current", []):
            record = SeriesRecord(
                PublishedSeries(**r["series"]), r["init_release"], r["revised_release"]
            )
            current[record.series.series_uid] = record
        return cls(
            releases=tuple(
                Release(**(r | {"tables_changed": tuple(r["tables_changed"])}))
                for r in raw.get("releases", [])
            ),
            current=current,
            prior=tuple(
                PriorVersion(
                    PublishedSeries(**p["series"]),
                    p["min_release"],
                    p["max_release"],
                    p["superseded_by"],
                )
                for p in raw.get("prior", [])
            ),
            tables=dict(raw.get("tables", {})),
        )

    @classmethod
    def load(cls, path: Path) -> Ledger:
        return cls.from_json(path.read_text(encoding="utf-8")) if path.is_file() else cls()


def record_release(
    ledger: Ledger,
    published: Iterable[PublishedSeries],
    tables: Mapping[str, str],
    code_version: str,
    date: str,
) -> Ledger:
    """The ledger after this run: unchanged when nothing published changed (no release),
    else with release `last + 1`. A new UID in a place that held another is a revision of
    it; an old UID whose place is gone was removed."""
    now = {s.series_uid: s for s in published}
    before = ledger.current
    added = [uid for uid in now if uid not in before]
    gone = [uid for uid in before if uid not in now]
    tables_changed = tuple(
        sorted(n for n in set(tables) | set(ledger.tables) if tables.get(n) != ledger.tables.get(n))
    )
    if not added and not gone and not tables_changed:
        return ledger
    number = ledger.last + 1
    gone_by_place = {before[uid].series.place: before[uid] for uid in gone}
    current: dict[str, SeriesRecord] = {uid: r for uid, r in before.items() if uid in now}
    prior = list(ledger.prior)
    revised = 0
    for uid in added:
        series = now[uid]
        previous = gone_by_place.pop(series.place, None)
        if previous is not None:
            revised += 1
            prior.append(PriorVersion(previous.series, previous.revised_release, number - 1, uid))
            current[uid] = SeriesRecord(series, previous.init_release, number)
        else:
            current[uid] = SeriesRecord(series, number, number)
    for previous in gone_by_place.values():
        prior.append(PriorVersion(previous.series, previous.revised_release, number - 1, None))
    release = Release(
        number=number,
        date=date,
        code_version=code_version,
        added=len(added) - revised,
        revised=revised,
        removed=len(gone_by_place),
        tables_changed=tables_changed,
    )
    return Ledger(
        releases=(*ledger.releases, release),
        current=dict(sorted(current.items())),
        prior=tuple(prior),
        tables=dict(tables),
    )


def series_version_uuid(series_uid: str) -> str:
    """Our `crdc_series_uuid`: one identifier per version of a series (its UID is one)."""
    return str(uuid.uuid5(UUID_NAMESPACE, series_uid))


def published_series(index: pl.DataFrame, paths: pl.DataFrame) -> list[PublishedSeries]:
    """The published series from the index tables `index` and `bms_instance_paths`."""
    places = {
        row["SeriesInstanceUID"]: (row["slide_id"], _role(row["instance_path"]))
        for row in paths.select("SeriesInstanceUID", "slide_id", "instance_path").iter_rows(
            named=True
        )
    }
    found: list[PublishedSeries] = []
    for row in index.iter_rows(named=True):
        slide_id, role = places.get(row["SeriesInstanceUID"], ("", ""))
        found.append(
            PublishedSeries(
                series_uid=row["SeriesInstanceUID"],
                study_uid=row["StudyInstanceUID"],
                patient_id=row["PatientID"],
                modality=row["Modality"],
                slide_id=slide_id,
                role=role,
                size_mb=round(float(row["series_size_MB"] or 0.0), 6),
            )
        )
    return found


def _role(instance_path: str) -> str:
    """`dicom/<slide>/sm/<uid>.dcm` -> `sm`; `dicom/<slide>/ann/consensus.dcm` ->
    `ann/consensus` (one ANN object per series, named after the series)."""
    parts = PurePosixPath(instance_path).parts
    if len(parts) >= 3 and parts[2] == "sm":
        return "sm"
    if len(parts) >= 4:
        return f"ann/{PurePosixPath(parts[3]).stem}"
    return "/".join(parts[2:])


def release_tables(ledger: Ledger, collection_id: str) -> dict[str, pl.DataFrame]:
    """`bms_releases`, `bms_series_releases` and `bms_prior_versions_index` from the ledger."""
    releases = pl.DataFrame(
        [{**asdict(r), "tables_changed": ", ".join(r.tables_changed)} for r in ledger.releases],
        schema={
            "number": pl.Int64,
            "date": pl.String,
            "code_version": pl.String,
            "added": pl.Int64,
            "revised": pl.Int64,
            "removed": pl.Int64,
            "tables_changed": pl.String,
        },
    ).rename({"number": "release"})
    series = pl.DataFrame(
        [
            {
                "collection_id": collection_id,
                "PatientID": r.series.patient_id,
                "SeriesInstanceUID": r.series.series_uid,
                "StudyInstanceUID": r.series.study_uid,
                "Modality": r.series.modality,
                "slide_id": r.series.slide_id,
                "series_role": r.series.role,
                "crdc_series_uuid": series_version_uuid(r.series.series_uid),
                "series_init_release": r.init_release,
                "series_revised_release": r.revised_release,
            }
            for r in ledger.current.values()
        ],
        schema={
            "collection_id": pl.String,
            "PatientID": pl.String,
            "SeriesInstanceUID": pl.String,
            "StudyInstanceUID": pl.String,
            "Modality": pl.String,
            "slide_id": pl.String,
            "series_role": pl.String,
            "crdc_series_uuid": pl.String,
            "series_init_release": pl.Int64,
            "series_revised_release": pl.Int64,
        },
    )
    prior = pl.DataFrame(
        [
            {
                "collection_id": collection_id,
                "PatientID": p.series.patient_id,
                "SeriesInstanceUID": p.series.series_uid,
                "StudyInstanceUID": p.series.study_uid,
                "Modality": p.series.modality,
                "crdc_series_uuid": series_version_uuid(p.series.series_uid),
                "series_size_MB": p.series.size_mb,
                "min_idc_version": p.min_release,
                "max_idc_version": p.max_release,
                "slide_id": p.series.slide_id,
                "series_role": p.series.role,
                "superseded_by": p.superseded_by,
            }
            for p in ledger.prior
        ],
        schema={
            "collection_id": pl.String,
            "PatientID": pl.String,
            "SeriesInstanceUID": pl.String,
            "StudyInstanceUID": pl.String,
            "Modality": pl.String,
            "crdc_series_uuid": pl.String,
            "series_size_MB": pl.Float64,
            "min_idc_version": pl.Int64,
            "max_idc_version": pl.Int64,
            "slide_id": pl.String,
            "series_role": pl.String,
            "superseded_by": pl.String,
        },
    )
    return {
        "bms_releases": releases,
        "bms_series_releases": series,
        "bms_prior_versions_index": prior,
    }
