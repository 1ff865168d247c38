"""The audit of every door: no identifying value of the inputs in any byte the pipeline keeps.

The DICOM gate (`core.dicom.phi`) proves each slide's series clean before it is published;
this audit covers everything else the pipeline writes: every file under the output root
(tables, DuckDB, QC page, validation results, staging) and the Dagster instance (its SQLite
files, WAL files and logs under `.dagster`, or the tables of a PostgreSQL instance).

What is searched for (`input_needles`), each under a name that says where it came from:
- each slide's MIRAX properties outside the allow-list, and its label text where a reader
  gives one, by the gate's own rule (`PrivacyPolicy.for_slide`, the collection's
  de-identification settings);
- the cells of clinical.csv's columns the collection does not define, and of the lab
  workbook's unknown columns and sheets (free text);
- the credentials of every configured URL (DICOMweb, PostgreSQL) and of the environment.

The rule against false positives: a value is searched for only if it is at least
`MIN_NEEDLE_LENGTH` characters long and holds a letter (credentials: at least that long),
and never if it equals a value the outputs carry on purpose (every slide id and patient id,
the collection's names, the allow-listed properties, the defined clinical and lab columns'
cells). An occurrence inside such a carried value is excused (a SLIDE_NAME that is part of
the slide id is not a leak).

Hits name the place (file and byte offset; or database, table, row and column) and the
value's name, never the value. Compressed content is read decoded as well as raw: Parquet
and DuckDB columns, and zlib-compressed database cells (Dagster's snapshots).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bms_pipeline.core.dicom.phi import (
    MANY_NEEDLES,
    MIN_NEEDLE_LENGTH,
    IdentifierHit,
    Needle,
    PrivacyPolicy,
    allowed_properties,
    inside_token,
    looks_identifying,
)
from bms_pipeline.core.layout import DataLayout
from bms_pipeline.core.privacy.credentials import split_credentials

SQLITE_MAGIC = b"SQLite format 3\x00"
CACHE_NAME = "privacy-audit.json"
ZLIB_HEADERS = (b"x\x01", b"x^", b"x\x9c", b"x\xda")


@dataclass(frozen=True)
class AuditHit:
    place: str  # e.g. "out/tables/x.parquet, column notes, row 3" or "…/index.db, byte 1234"
    needle: str  # which input value it is (its source), never the value

    def describe(self) -> str:
        return f"{self.place}: holds {self.needle}"


@dataclass
class AuditReport:
    hits: list[AuditHit] = field(default_factory=list[AuditHit])
    needles: int = 0
    excused: int = 0  # input values not searched for: they equal a carried value
    files: int = 0
    bytes: int = 0
    cells: int = 0  # decoded cells read (Parquet, DuckDB, database rows)
    unchanged: int = 0  # files found clean before and unchanged since, not read again
    warnings: list[str] = field(default_factory=list[str])  # places only read raw, inputs unread
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.hits

    def summary(self) -> str:
        verdict = "no identifying value found" if self.clean else f"{len(self.hits)} hit(s)"
        return (
            f"privacy audit: {verdict}; {self.needles} input value(s) searched for "
            f"({self.excused} equal to carried values, not searched) in {self.files} file(s) "
            f"({self.unchanged} unchanged since found clean), {self.bytes / 1e6:.1f} MB read, "
            f"{self.cells} decoded cell(s), {self.seconds:.1f} s"
        )


# -- what to search for ---------------------------------------------------------------------


@dataclass(frozen=True)
class Deidentification:
    keep_dates: bool = False
    keep_slide_id: bool = False


def slide_properties(mrxs: Path) -> dict[str, str]:
    """The slide's properties as OpenSlide gives them, or (for a slide OpenSlide cannot open)
    its Slidedat.ini [GENERAL] section under the same names."""
    try:
        from bms_pipeline.core.mirax.inventory import openslide_properties

        return dict(openslide_properties(mrxs))
    except Exception:  # noqa: BLE001 - a broken slide still has its ini to audit for
        import configparser

        ini = mrxs.with_suffix("") / "Slidedat.ini"
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # type: ignore[assignment]  # keys keep their case
        try:
            parser.read(ini, encoding="utf-8-sig")
        except (configparser.Error, OSError, UnicodeDecodeError):
            return {}
        if not parser.has_section("GENERAL"):
            return {}
        return {f"mirax.GENERAL.{k}": v for k, v in parser.items("GENERAL")}


def credential_needles(urls: Mapping[str, str], env: Mapping[str, str]) -> list[Needle]:
    """The user:password and password of each URL (by the setting that named it), and the
    secrets of the environment (`BMS_DICOMWEB_PASSWORD`, `BMS_DICOMWEB_TOKEN`)."""
    from bms_pipeline.core.dicomweb.config import PASSWORD_ENV, TOKEN_ENV

    needles: list[Needle] = []
    for source, url in urls.items():
        _, credentials = split_credentials(url.strip())
        if credentials is None:
            continue
        pair = f"{credentials.user}:{credentials.password}"
        if credentials.password and len(pair) >= MIN_NEEDLE_LENGTH:
            needles.append(Needle(f"the user:password of {source}", pair.encode()))
        if len(credentials.password) >= MIN_NEEDLE_LENGTH:
            needles.append(Needle(f"the password of {source}", credentials.password.encode()))
    for name in (PASSWORD_ENV, TOKEN_ENV):
        value = env.get(name, "")
        if len(value) >= MIN_NEEDLE_LENGTH:
            needles.append(Needle(f"${name}", value.encode()))
    return needles


def _clinical_cells(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(free-text cells as (name, value), the defined columns' values) of clinical.csv."""
    from bms_pipeline.core.clinical.patients import CLINICAL_COLUMNS

    free: list[tuple[str, str]] = []
    carried: list[str] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        header: list[str] = next(reader, None) or []
        # Columns by number: an undefined column's header is free text too.
        for position, column in enumerate(header, start=1):
            if column.strip() not in CLINICAL_COLUMNS:
                free.append((f"{path.name} header of column {position}", column))
        for line, row in enumerate(reader, start=2):
            for position, (column, value) in enumerate(zip(header, row, strict=False), start=1):
                if column.strip() in CLINICAL_COLUMNS:
                    carried.append(value)
                else:
                    free.append((f"{path.name} column {position}, line {line}", value))
    return free, carried


def _lab_cells(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(free-text cells, the defined cells) of the lab workbook: sheet lab_values' columns
    other than patient_id and the LOINC columns, and every cell of sheets the collection does
    not define, are free text; idc_dictionary's labels are published. Cells are placed at
    their Excel row and column (`core.clinical.lab_cells.SheetGrid`)."""
    from bms_pipeline.core.clinical.lab_cells import (
        DICTIONARY_SHEET,
        LAB_SHEET,
        loinc_lab_columns,
        read_sheet_grids,
    )
    from bms_pipeline.core.clinical.naming import bigquery_name
    from bms_pipeline.core.clinical.workbook import column_letter, open_workbook

    known = {"patient_id", *loinc_lab_columns()}
    workbook = open_workbook(path)
    free: list[tuple[str, str]] = []
    carried: list[str] = []
    for sheet, grid in read_sheet_grids(workbook, workbook.sheet_names).items():
        headers = grid.headers
        for j, column in enumerate(grid.frame.columns):
            header = headers[j] if j < len(headers) else None
            letter = column_letter(grid.first_column + j)
            defined = sheet == DICTIONARY_SHEET or (
                sheet == LAB_SHEET and header is not None and _safe(bigquery_name, header) in known
            )
            values = grid.frame[column].to_list()
            for i, value in enumerate(values[1:], start=1):
                if value is None:
                    continue
                if defined:
                    carried.append(value)
                else:
                    cell = f"{letter}{grid.first_row + i}"
                    free.append((f"{path.name} sheet {sheet!r} cell {cell}", value))
            if not defined and header is not None:  # the header itself is free text too
                free.append((f"{path.name} sheet {sheet!r} header of column {letter}", header))
    return free, carried


def _safe(fn: Callable[[str], str], value: str) -> str | None:
    try:
        return fn(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class AuditNeedles:
    policy: PrivacyPolicy  # the needles and the carried values that excuse
    excused: int  # input values equal to a carried value, so not searched for
    problems: tuple[str, ...]  # inputs that could not be read, by name


def input_needles(
    slides: Mapping[str, Path],
    carried: Iterable[str],
    deidentification: Deidentification,
    clinical_csv: Path | None = None,
    lab_workbook: Path | None = None,
    urls: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> AuditNeedles:
    """Every identifying value the inputs hold, with the values the outputs carry on purpose
    (see the module doc); and the inputs that could not be read, by name."""
    from bms_pipeline.core.slide_id import SlideIdError, patient_id_of

    problems: list[str] = []
    allowed: set[str] = {v for v in carried if v}
    properties: dict[str, dict[str, str]] = {}
    for slide_id, mrxs in sorted(slides.items()):
        allowed.add(slide_id)
        with contextlib.suppress(SlideIdError):  # a malformed id is its own input error
            allowed.add(patient_id_of(slide_id))
        properties[slide_id] = slide_properties(mrxs)
        if not properties[slide_id]:
            problems.append(f"{mrxs}: no properties readable (slide not audited for)")
        allowed.update(allowed_properties(properties[slide_id]).values())
    free: list[tuple[str, str]] = []
    for reader, path in ((_clinical_cells, clinical_csv), (_lab_cells, lab_workbook)):
        if path is None or not path.is_file():
            continue
        try:
            cells, defined = reader(path)
        except Exception as exc:  # noqa: BLE001 - named, and the audit goes on without it
            problems.append(f"{path}: not read for the audit ({type(exc).__name__})")
            continue
        free += cells
        allowed.update(v.strip() for v in defined)
    allowed_values = sorted({v.strip() for v in allowed if len(v.strip()) >= 4})
    allowed_set = set(allowed_values)

    needles: dict[bytes, Needle] = {}  # one needle per value, named by its first source
    excused = 0
    for slide_id, props in properties.items():
        policy = PrivacyPolicy.for_slide(
            props,
            allowed_values,
            keep_dates=deidentification.keep_dates,
            keep_slide_id=deidentification.keep_slide_id,
        )
        excused += len(policy.excused)
        for n in policy.needles:
            # Digits only (the scan date as DA or DT): counted as a token of its own only.
            token = n.value.isdigit()
            needles.setdefault(n.value, Needle(f"{n.name} of slide {slide_id}", n.value, token))
    for name, value in free:
        value = value.strip()
        if not looks_identifying(value):
            continue
        if value in allowed_set:
            excused += 1
            continue
        needles.setdefault(value.encode(), Needle(name, value.encode()))
    for n in credential_needles(urls or {}, env if env is not None else os.environ):
        needles.setdefault(n.value, n)
    policy = PrivacyPolicy(tuple(needles.values()), tuple(v.encode() for v in allowed_values))
    return AuditNeedles(policy, excused, tuple(problems))


# -- where to search ------------------------------------------------------------------------


class _Finder:
    """Unexcused occurrences of the policy's needles in a value (a cell, a decoded blob)."""

    def __init__(self, policy: PrivacyPolicy) -> None:
        self.needles = policy.needles
        self.excuses = {n.name: policy.excuses(n.value) for n in policy.needles}

    def first(self, data: bytes, needle: Needle) -> int | None:
        at = data.find(needle.value)
        while at >= 0:
            if not PrivacyPolicy.is_excused(
                data, at, self.excuses[needle.name]
            ) and not inside_token(data, at, needle):
                return at
            at = data.find(needle.value, at + 1)
        return None

    def found_in(self, cells: Sequence[bytes]) -> list[list[Needle]]:
        """The needles with an unexcused occurrence, per cell. Few needles: a substring test
        each; many (a collection's): one Aho-Corasick pass over all cells (see `phi._occur`)."""
        if len(self.needles) < MANY_NEEDLES:
            present = [[n for n in self.needles if n.value in c] for c in cells]
        else:
            import polars as pl

            by_text = {n.value.decode("latin-1"): n for n in self.needles}
            texts = pl.Series([c.decode("latin-1") for c in cells], dtype=pl.String)
            matches = texts.str.extract_many(list(by_text), overlapping=True).to_list()
            present = [[by_text[m] for m in dict.fromkeys(found or [])] for found in matches]
        return [
            [n for n in needles if self.first(cell, n) is not None]
            for cell, needles in zip(cells, present, strict=True)
        ]


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(cast("bytes | bytearray | memoryview[int]", value))
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return None


def _decoded(data: bytes) -> bytes | None:
    """A zlib-compressed cell, inflated (Dagster compresses its snapshots so)."""
    if not data.startswith(ZLIB_HEADERS):
        return None
    try:
        return zlib.decompress(data)
    except zlib.error:
        return None


Row = tuple[str, object, dict[str, object]]
"""(table, row key, {column: value}) of a decoded place."""


CELL_BATCH = 4096
"""Cells searched at once (one Aho-Corasick pass per batch when the needles are many)."""


def scan_rows(rows: Iterable[Row], finder: _Finder, where: str) -> tuple[list[AuditHit], int]:
    """(hits, cells read) over (table, row key, {column: value}) rows: each cell raw and, if
    it is zlib-compressed, inflated. One hit per needle and table."""
    hits: list[AuditHit] = []
    seen: set[tuple[str, str]] = set()
    cells = 0
    batch: list[tuple[str, str, bytes]] = []  # (table, place, content)

    def flush() -> None:
        for (table, place, _), needles in zip(
            batch, finder.found_in([c for _, _, c in batch]), strict=True
        ):
            for needle in needles:
                if (table, needle.name) not in seen:
                    seen.add((table, needle.name))
                    hits.append(AuditHit(place, needle.name))
        batch.clear()

    for table, key, columns in rows:
        for column, value in columns.items():
            data = _as_bytes(value)
            if data is None:
                continue
            cells += 1
            for form, content in (("", data), (" (inflated)", _decoded(data))):
                if content is not None:
                    place = f"{where}, table {table}, row {key}, column {column}{form}"
                    batch.append((table, place, content))
            if len(batch) >= CELL_BATCH:
                flush()
    flush()
    return hits, cells


def _sqlite_rows(path: Path) -> Iterator[Row]:
    # Without a journal to read, `immutable` leaves no -wal/-shm file behind (mode=ro makes
    # them for a WAL database); with one, its rows count too.
    wal = path.with_name(path.name + "-wal")
    journal = wal.is_file() and wal.stat().st_size > 0
    options = "mode=ro" if journal else "immutable=1"
    connection = sqlite3.connect(f"file:{path}?{options}", uri=True)
    try:
        tables = [
            r[0]
            for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            # The table name comes from the database's own catalogue, not from input.
            cursor = connection.execute(f'SELECT rowid, * FROM "{table}"')  # noqa: S608
            names = [d[0] for d in cursor.description][1:]
            for row in cursor:
                yield table, row[0], dict(zip(names, row[1:], strict=True))
    finally:
        connection.close()


def _postgres_rows(url: str) -> Iterator[Row]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        with engine.connect() as connection:
            for table in inspector.get_table_names():
                key = inspector.get_pk_constraint(table).get("constrained_columns") or []
                result = connection.execution_options(stream_results=True, yield_per=500).execute(
                    sa.text(f'SELECT * FROM "{table}"')  # noqa: S608 (a catalogue name)
                )
                for number, row in enumerate(result.mappings(), start=1):
                    values = dict(row)
                    label = values.get(key[0]) if len(key) == 1 else number
                    yield table, label, values
    finally:
        engine.dispose()


def _parquet_cells(path: Path) -> Iterator[Row]:
    import polars as pl

    frame = pl.read_parquet(path)
    for column in frame.columns:
        series = frame[column]
        if series.dtype == pl.Binary:
            values: list[object] = series.to_list()
        elif (
            series.dtype == pl.String
            or series.dtype == pl.Categorical
            or isinstance(series.dtype, pl.Enum)
        ):
            values = series.cast(pl.String).to_list()
        elif series.dtype.is_nested():
            values = [None if v is None else str(v) for v in series.to_list()]
        else:
            continue  # numbers, dates, booleans: no text to hold a name
        for row, value in enumerate(values, start=1):
            if value is not None:
                yield "parquet", row, {column: value}


def _duckdb_cells(path: Path) -> Iterator[Row]:
    import duckdb

    connection = duckdb.connect(str(path), read_only=True)
    try:
        columns = connection.execute(
            "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) "
            "WHERE t.table_type = 'BASE TABLE' AND c.data_type IN ('VARCHAR', 'BLOB', 'JSON')"
        ).fetchall()
        for schema, table, column in columns:
            rows = connection.execute(
                f'SELECT rowid, "{column}" FROM "{schema}"."{table}" '  # noqa: S608 (catalogue names)
                f'WHERE "{column}" IS NOT NULL'
            ).fetchall()
            for rowid, value in rows:
                yield f"{schema}.{table}", rowid, {column: value}
    finally:
        connection.close()


DECODERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    ".parquet": _parquet_cells,
    ".duckdb": _duckdb_cells,
}


def _files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _shown(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(path)


class ScanCache:
    """The files found clean against this very set of values, by (size, mtime): a rerun that
    changed nothing reads none of them again (a real collection keeps about 100 GB of DICOM).
    Any change of the values searched for (a slide, a clinical cell, a credential) empties it.
    It holds paths and a salted digest of the values, never a value; a file changed in place
    with its size and modification time kept is the case it cannot see (`audit --full`)."""

    VERSION = 1

    def __init__(self, path: Path, policy: PrivacyPolicy) -> None:
        import hashlib
        import json
        import secrets

        self.path = path
        try:
            loaded: object = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = None
        stored: dict[str, Any] = {}
        if isinstance(loaded, dict):
            # A JSON object; isinstance binds no type arguments.
            candidate = cast("dict[str, Any]", loaded)
            if candidate.get("version") == self.VERSION:
                stored = candidate
        self.salt = str(stored.get("salt") or secrets.token_hex(16))
        digest = hashlib.sha256(self.salt.encode())
        for value in sorted(n.value for n in policy.needles):
            digest.update(b"\0n" + value)
        for value in sorted(policy.allowed):
            digest.update(b"\0a" + value)
        self.digest = digest.hexdigest()
        files = stored.get("files") if stored.get("digest") == self.digest else None
        self.files: dict[str, list[int]] = (
            dict(cast("dict[str, list[int]]", files)) if isinstance(files, dict) else {}
        )
        self.clean: dict[str, list[int]] = {}
        self.skipped = 0

    @staticmethod
    def identity(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def fresh(self, path: Path) -> bool:
        """Scanned clean before, unchanged since: recorded again and skipped."""
        identity = self.identity(path)
        if self.files.get(str(path)) == identity:
            self.clean[str(path)] = identity
            self.skipped += 1
            return True
        return False

    def record_clean(self, path: Path, identity: list[int]) -> None:
        self.clean[str(path)] = identity

    def save(self) -> None:
        import json

        from bms_pipeline.core.atomic_outputs import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.path,
            json.dumps(
                {
                    "version": self.VERSION,
                    "salt": self.salt,
                    "digest": self.digest,
                    "files": self.clean,
                },
                indent=0,
                sort_keys=True,
            ),
        )


def scan_places(
    needles: AuditNeedles,
    roots: Sequence[Path],
    postgres: tuple[str, str] | None = None,
    base: Path | None = None,
    cache: Path | None = None,
) -> AuditReport:
    """Every file under `roots` (raw bytes; Parquet, DuckDB and SQLite also decoded, row by
    row) and the tables of a PostgreSQL instance (`postgres`: its SQLAlchemy URL and the name
    to show, without the password), for the policy's needles. With `cache`, files found
    clean before against the same values and unchanged since are not read again."""
    started = time.perf_counter()
    policy = needles.policy
    report = AuditReport(
        needles=len(policy.needles), excused=needles.excused, warnings=list(needles.problems)
    )
    finder = _Finder(policy)
    if not policy.needles:
        report.seconds = time.perf_counter() - started
        return report
    located_in: dict[Path, set[str]] = {}  # SQLite file -> needles its rows hold
    kept = ScanCache(cache, policy) if cache is not None else None
    for root in roots:
        if not root.exists():
            continue
        for path in _files(root):
            if kept is not None and path == kept.path:
                continue  # the cache itself: paths and a digest, rewritten below
            shown = _shown(path, base)
            report.files += 1
            try:
                if kept is not None and kept.fresh(path):
                    report.unchanged += 1
                    continue
                identity = ScanCache.identity(path)  # before the read
                report.bytes += identity[0]
                raw: list[IdentifierHit] = policy.scan([path])
            except (OSError, ValueError) as exc:
                report.warnings.append(f"{shown}: not read ({type(exc).__name__})")
                continue
            decoder = DECODERS.get(path.suffix)
            sqlite = decoder is None and _is_sqlite(path)
            if sqlite:
                decoder = _sqlite_rows
            decoded_hits: list[AuditHit] = []
            decoded = True
            if decoder is not None:
                try:
                    decoded_hits, cells = scan_rows(decoder(path), finder, shown)
                    report.cells += cells
                except Exception as exc:  # noqa: BLE001 - its raw bytes were still scanned
                    decoded = False
                    report.warnings.append(
                        f"{shown}: only its raw bytes scanned, not decoded ({type(exc).__name__})"
                    )
            located = {h.needle for h in decoded_hits}
            if sqlite:
                located_in[path] = located
            # A database's journal (`x.db-wal`, read with it) holds the rows just named.
            for suffix in ("-wal", "-journal"):
                if path.name.endswith(suffix):
                    located |= located_in.get(path.with_name(path.name[: -len(suffix)]), set())
            report.hits += decoded_hits
            unplaced = [hit for hit in raw if hit.name not in located]
            for hit in unplaced:  # a database row names the place better
                where = " (outside any row: a free page or the journal)" if sqlite else ""
                report.hits.append(AuditHit(f"{shown}, byte {hit.offset}{where}", hit.name))
            if kept is not None and not raw and not decoded_hits and decoded:
                kept.record_clean(path, identity)
    if postgres is not None:
        url, shown = postgres
        try:
            hits, cells = scan_rows(_postgres_rows(url), finder, shown)
            report.hits += hits
            report.cells += cells
        except Exception as exc:  # noqa: BLE001 - named; an instance left unread is a finding
            report.hits.append(
                AuditHit(shown, f"nothing: it could not be read ({type(exc).__name__})")
            )
    if kept is not None:
        kept.save()
    report.seconds = time.perf_counter() - started
    return report


def audit_layout(
    layout: DataLayout,
    instance_home: Path,
    urls: Mapping[str, str] | None = None,
    postgres: tuple[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    full: bool = True,
) -> AuditReport:
    """The audit of a data root: its inputs' identifying values (collection.yaml's settings
    and names, raw/slides, raw/clinical), searched for under the output root and the
    Dagster instance (`instance_home`, and `postgres` when the instance lives there).
    Not `full`: files found clean before and unchanged since are skipped (`ScanCache`, kept
    as `instance_home`/privacy-audit.json); `full` reads everything and renews the cache."""
    from bms_pipeline.core.collection import CollectionConfig
    from bms_pipeline.core.dicomweb.config import url_from_collection_yaml

    problems: list[str] = []
    carried: tuple[str, ...] = ()
    deid = Deidentification()
    urls = dict(urls or {})
    try:
        collection = CollectionConfig.load(layout.collection_yaml)
        carried = collection.carried_values
        deid = Deidentification(
            collection.deidentification.keep_dates, collection.deidentification.keep_slide_id
        )
    except Exception as exc:  # noqa: BLE001 - named; the audit then assumes the strict policy
        problems.append(
            f"{layout.collection_yaml}: not read ({type(exc).__name__}); no collection names "
            "excused, dates and slide ids searched for"
        )
    try:
        yaml_url = url_from_collection_yaml(layout.collection_yaml)
    except Exception:  # noqa: BLE001 - reported above or irrelevant to the audit
        yaml_url = None
    if yaml_url:
        urls.setdefault(f"{layout.collection_yaml.name}: dicomweb.url", yaml_url)
    slides = (
        {p.stem: p for p in sorted(layout.slides_dir.glob("*.mrxs"))}
        if layout.slides_dir.is_dir()
        else {}
    )
    needles = input_needles(
        slides,
        carried,
        deid,
        layout.clinical_csv,
        layout.lab_values_xlsx,
        urls,
        env,
    )
    needles = AuditNeedles(needles.policy, needles.excused, (*problems, *needles.problems))
    cache = instance_home / CACHE_NAME
    if full:
        cache.unlink(missing_ok=True)
    return scan_places(needles, [layout.out, instance_home], postgres, layout.root, cache)
