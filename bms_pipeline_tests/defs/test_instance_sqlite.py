"""Dagster's SQLite storage as `bms-pipeline run` uses it (`instance.py`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import pytest


@dg.asset
def whole() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def test_sqlite_files_stay_open_between_connections_and_are_closed_on_exit(
    tmp_path: Path,
) -> None:
    """While `sqlite_files_kept_open` is on, a file a NullPool engine used keeps one idle
    connection of this process (so its WAL outlives the engine's connection, uncheckpointed);
    on exit it is closed, which checkpoints the WAL into the file, and every commit is there."""
    import sqlalchemy as sa

    from bms_pipeline.orchestration.instance import kept_open_sqlite_files, sqlite_files_kept_open

    db = tmp_path / "t.db"
    engine = sa.create_engine(f"sqlite:///{db}", poolclass=sa.pool.NullPool)
    with sqlite_files_kept_open():
        with engine.connect() as conn:
            conn.execute(sa.text("PRAGMA journal_mode=WAL"))
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
            conn.commit()
        assert kept_open_sqlite_files() == [str(db)]
        # The engine's connection is closed, but it was not the last one: no checkpoint.
        assert (tmp_path / "t.db-wal").stat().st_size > 0
        with engine.connect() as conn:  # a second use opens no second idle connection
            conn.execute(sa.text("INSERT INTO t VALUES (3)"))
            conn.commit()
        assert kept_open_sqlite_files() == [str(db)]
        other = sqlite3.connect(db)  # another reader sees every commit meanwhile
        assert other.execute("SELECT sum(x) FROM t").fetchone() == (6,)
        other.close()
    assert kept_open_sqlite_files() == []
    assert not (tmp_path / "t.db-wal").exists() or (tmp_path / "t.db-wal").stat().st_size == 0
    plain = sqlite3.connect(db)
    assert plain.execute("SELECT sum(x) FROM t").fetchone() == (6,)
    plain.close()

    # Off: nothing is kept.
    with engine.connect() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (4)"))
        conn.commit()
    assert kept_open_sqlite_files() == []


def test_a_dagster_instance_used_with_files_kept_open_keeps_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bms_pipeline.cli import dagster_instance
    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.orchestration.instance import (
        instance_home,
        kept_open_sqlite_files,
        sqlite_files_kept_open,
    )

    layout = DataLayout.at(tmp_path / "root")
    monkeypatch.setenv("DAGSTER_HOME", str(instance_home(layout)))  # restored afterwards
    instance = dagster_instance(layout)
    with sqlite_files_kept_open():
        result = dg.materialize([whole], instance=instance)
        assert result.success
        kept = kept_open_sqlite_files()
        assert any(Path(p).name == "index.db" for p in kept)
        assert any(Path(p).name == f"{result.run_id}.db" for p in kept)
    assert kept_open_sqlite_files() == []
    reopened = dg.DagsterInstance.from_config(str(instance_home(layout)))
    assert [r.run_id for r in reopened.get_runs()] == [result.run_id]
    assert reopened.get_latest_materialization_event(whole.key) is not None
