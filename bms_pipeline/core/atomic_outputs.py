"""Writing outputs safely: atomic files, one DuckDB writer at a time.

Readers (and a crashed run) see the old file or the new one, never half of one; every
writer of out/bms.duckdb takes the same lock, so concurrent runs never lose each other's
tables.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
import struct
import threading
import time
import uuid
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import polars as pl

if TYPE_CHECKING:
    from bms_pipeline.core.layout import DataLayout


class OutputWriteError(RuntimeError):
    """An output could not be written; the message names the file and the reason."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    """`.<name>.<writer pid>.<random>.tmp` (a DuckDB rebuild adds its `.wal`): hidden, and
    naming its writer, so what a killed writer left can be told apart (`temp_file_writer`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.tmp(\.wal)?$")
_RETIRED_PREFIX = ".retired-"


def temp_file_writer(name: str) -> int | None:
    """The pid of the process that wrote the temporary file `name` (see `_temp_beside`), or
    None when `name` is not one of ours."""
    match = _TEMP_NAME.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Leftovers:
    """What a killed writer may have left under the output root."""

    unowned: tuple[Path, ...]
    """Staging folders and retired series: their names do not say whose they are."""
    temp_files: tuple[Path, ...]
    """Atomic-write temporary files, each naming its writer (`temp_file_writer`)."""


def leftovers(layout: DataLayout) -> Leftovers:
    """The staging entries, retired series and temporary files now under `layout.out`."""
    staging = layout.staging_dir
    unowned = [*staging.iterdir()] if staging.is_dir() else []
    unowned += layout.dicom_dir.glob(f"*/{_RETIRED_PREFIX}*")
    temp_files = [
        entry
        for folder in layout.atomic_write_dirs
        if folder.is_dir()
        for entry in folder.iterdir()
        if temp_file_writer(entry.name) is not None
    ]
    return Leftovers(tuple(unowned), tuple(temp_files))


def _commit(tmp: Path, path: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write a text file so readers see the old or the new content, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            tmp.chmod(mode)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write a parquet file atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        frame.write_parquet(tmp)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def duckdb_lock_path(db_path: Path) -> Path:
    """The sidecar lock every writer of ``db_path`` takes first."""
    return db_path.with_name(f"{db_path.name}.lock")


@contextmanager
def exclusive_lock(path: Path, timeout: float = 600.0) -> Generator[None]:
    """Hold an exclusive flock on ``path`` (created if missing), waiting up to ``timeout`` s.

    flock locks belong to the open file, so two threads of one process exclude each other
    as two processes do; the kernel releases the lock if the holder dies. (flock is not
    reliable on some network filesystems; keep out/ on a local disk or use one writer.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a+b") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path}: another writer held the lock for {timeout} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


FOREIGN_WRITER_TIMEOUT = 120.0
"""How long a rebuild waits for another process that holds the DuckDB file open for writing
(a `duckdb` shell, a notebook) to let go before it refuses."""

_FLOCK = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid


def _ofd_lock(fd: int, kind: int, command: int) -> tuple[int, int]:
    """An open-file-description lock over the whole file: (l_type, l_pid) of the answer."""
    answer = fcntl.fcntl(fd, command, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return kind, pid


@contextmanager
def no_foreign_writer(db_path: Path, timeout: float = FOREIGN_WRITER_TIMEOUT) -> Generator[None]:
    """Keep other DuckDB clients from writing ``db_path`` while it is copied and replaced.

    DuckDB takes a POSIX write lock (fcntl) on a database it opens for writing, a read lock
    on one it opens read-only. A client that writes the file while the rebuild copies it
    would lose its writes, or go on writing to a file renamed away. So: wait up to
    ``timeout`` s for such a writer to close the file, then refuse (OutputWriteError naming
    the file and the process); while the rebuild runs, hold a read lock, which DuckDB
    writers cannot pass and readers can. The lock is Linux's open-file-description kind
    (F_OFD_SETLK): it conflicts with DuckDB's POSIX locks, even those of this process, and
    other opens and closes of the file (the copy) do not drop it as they would a POSIX one.
    """
    try:
        fd = os.open(db_path, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _ofd_lock(fd, fcntl.F_RDLCK, fcntl.F_OFD_SETLK)
                break
            except OSError:
                if time.monotonic() > deadline:
                    kind, pid = _ofd_lock(fd, fcntl.F_RDLCK, fcntl.F_OFD_GETLK)
                    who = f"process {pid}" if kind != fcntl.F_UNLCK and pid > 0 else "a process"
                    raise OutputWriteError(
                        f"{db_path}: held open for writing by {who} (a DuckDB client); waited "
                        f"{timeout:.0f} s. Close it (or open it read_only) and run again; the "
                        "database is never replaced under a writer"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_engine: duckdb.DuckDBPyConnection | None = None
_engine_lock = threading.Lock()


def _duckdb_engine() -> duckdb.DuckDBPyConnection:
    """The process's DuckDB: an in-memory database that each rebuilt file is attached to.

    Opening a database file costs DuckDB a new instance every time (connect, the first
    catalog query, close: 25-35 ms measured), attaching one to a warm instance 3-4 ms, and
    one slide's run rebuilds out/bms.duckdb three times (clinical tables, DICOM index,
    validation report). Closed at exit. The caller holds `_engine_lock`."""
    global _engine
    if _engine is None:
        _engine = duckdb.connect(":memory:")
        atexit.register(_close_engine)
    return _engine


def _close_engine() -> None:
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.close()
            _engine = None


def rebuild_duckdb(
    db_path: Path,
    parquet_by_table: Mapping[str, Path],
    views: Mapping[str, str],
    writer_timeout: float = FOREIGN_WRITER_TIMEOUT,
) -> None:
    """Rebuild ``db_path`` with these tables and views; the caller holds the lock.

    The existing file (with its WAL) is copied to a temporary file, the named tables and
    views are replaced there, and the copy is checkpointed, fsynced and renamed over the
    original. Other tables survive; readers see the old or the new file, never a mix.
    The copy is attached to the process's DuckDB (`_duckdb_engine`) as the default
    database while it is rebuilt, so the views' SQL names its tables as a reader of the
    file does. Another process writing the file is waited for, then refused
    (`no_foreign_writer`), never replaced under.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with no_foreign_writer(db_path, writer_timeout):
        _rebuild(db_path, parquet_by_table, views)


def _rebuild(db_path: Path, parquet_by_table: Mapping[str, Path], views: Mapping[str, str]) -> None:
    tmp = _temp_beside(db_path)
    tmp_wal = Path(f"{tmp}.wal")
    wal = Path(f"{db_path}.wal")
    alias = f"rebuild_{uuid.uuid4().hex}"
    try:
        if db_path.exists():
            shutil.copyfile(db_path, tmp)
            if wal.exists():
                shutil.copyfile(wal, tmp_wal)
        with _engine_lock:
            con = _duckdb_engine()
            try:
                con.execute(f"ATTACH {_literal(str(tmp))} AS {_ident(alias)}")
            except duckdb.Error as exc:
                raise OutputWriteError(
                    f"{db_path}: the existing database cannot be opened ({exc}); move it away "
                    "to let the pipeline rebuild it"
                ) from exc
            try:
                con.execute(f"USE {_ident(alias)}")
                existing = dict(
                    con.execute(
                        "SELECT table_name, 'TABLE' FROM duckdb_tables() "
                        "WHERE database_name = ? AND schema_name = 'main' "
                        "UNION ALL SELECT view_name, 'VIEW' FROM duckdb_views() "
                        "WHERE database_name = ? AND schema_name = 'main' AND NOT internal",
                        [alias, alias],
                    ).fetchall()
                )
                for name in [*parquet_by_table, *views]:
                    if name in existing:
                        con.execute(f"DROP {existing[name]} {_ident(name)}")
                for name, path in parquet_by_table.items():
                    con.execute(
                        f"CREATE TABLE {_ident(name)} AS "  # noqa: S608 (quoted: _ident, _literal)
                        f"SELECT * FROM read_parquet({_literal(str(path))})"
                    )
                for name, sql in views.items():
                    con.execute(f"CREATE VIEW {_ident(name)} AS {sql}")
                con.execute(f"CHECKPOINT {_ident(alias)}")
            finally:
                con.execute("USE memory")
                con.execute(f"DETACH {_ident(alias)}")
        # The old WAL belongs to the old file (its content is in the copy); left beside the
        # new file it would be replayed onto it.
        wal.unlink(missing_ok=True)
        _commit(tmp, db_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_wal.unlink(missing_ok=True)


def write_duckdb_tables(
    db_path: Path,
    parquet_by_table: Mapping[str, Path],
    views: Mapping[str, str] | None = None,
    *,
    lock_timeout: float = 600.0,
    writer_timeout: float = FOREIGN_WRITER_TIMEOUT,
) -> None:
    """Put parquet files into ``db_path`` as tables (plus views), one writer at a time.

    For every writer of out/bms.duckdb (the DICOM index too), so that concurrent runs
    serialise on the same lock and never lose each other's tables.
    """
    with exclusive_lock(duckdb_lock_path(db_path), lock_timeout):
        rebuild_duckdb(db_path, parquet_by_table, views or {}, writer_timeout)


def keep_unchanged(staged: Path, final: Path) -> list[str]:
    """Link each staged file whose bytes equal the published file of the same name to that
    file, in place of the staged copy; the names kept. Any error leaves the staged copy."""
    import filecmp

    kept: list[str] = []
    if not final.is_dir():
        return kept
    for new in sorted(staged.iterdir()):
        old = final / new.name
        if not (new.is_file() and old.is_file()) or new.stat().st_size != old.stat().st_size:
            continue
        if not filecmp.cmp(new, old, shallow=False):
            continue
        link = new.with_name(f".{new.name}.kept")
        try:
            os.link(old, link)
            link.replace(new)
            kept.append(new.name)
        except OSError:
            link.unlink(missing_ok=True)
    return kept


def replace_dir_atomically(staged: Path, final: Path) -> None:
    """Swap a completed staging folder into place, keeping the old one until the new is in.

    Two renames on one filesystem: at every instant `final` is either the previous good
    output or the new complete one (or, for a first run, absent). A staged file whose bytes
    equal the published one's is replaced by a link to it first, so an unchanged file keeps
    its inode and mtime: only what changed is touched (`keep_unchanged`).
    """
    keep_unchanged(staged, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    retired = final.parent / f"{_RETIRED_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(retired)
    try:
        staged.rename(final)
    except OSError:
        if retired.exists():
            retired.rename(final)
        raise
    if retired.exists():
        shutil.rmtree(retired, ignore_errors=True)
