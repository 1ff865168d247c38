"""Dagster's SQLite storage as `bms-pipeline` opens it (`instance.py`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest


@dg.asset
def whole() -> dg.MaterializeResult:
    return dg.MaterializeResult()


def test_sqlite_connections_skip_the_checkpoint_on_close_and_keep_every_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`skip_sqlite_checkpoint_on_close` (instance.py): a connection SQLAlchemy opens leaves
    its WAL at close, and what it committed is read by a plain connection of its own and by a
    Dagster instance opened afterwards."""
    import sqlite3

    import sqlalchemy as sa

    from bms_pipeline.core.layout import DataLayout
    from bms_pipeline.orchestration.instance import skip_sqlite_checkpoint_on_close

    skip_sqlite_checkpoint_on_close()
    skip_sqlite_checkpoint_on_close()  # idempotent: one listener
    db = tmp_path / "t.db"
    engine = sa.create_engine(f"sqlite:///{db}", poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw.getconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE) is True
        conn.execute(sa.text("PRAGMA journal_mode=WAL"))
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
        conn.commit()
    assert (tmp_path / "t.db-wal").stat().st_size > 0  # not checkpointed away at close
    plain = sqlite3.connect(db)
    assert plain.getconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE) is False  # only SQLAlchemy's
    assert plain.execute("SELECT sum(x) FROM t").fetchone() == (3,)
    plain.close()

    # A whole Dagster instance made this way keeps its runs for the next process's instance.
    from bms_pipeline.cli import dagster_instance
    from bms_pipeline.orchestration.instance import instance_home

    layout = DataLayout.at(tmp_path / "root")
    monkeypatch.setenv("DAGSTER_HOME", str(instance_home(layout)))  # restored afterwards
    instance = dagster_instance(layout)
    result = dg.materialize([whole], instance=instance)
    assert result.success
    reopened = dg.DagsterInstance.from_config(str(instance_home(layout)))
    assert [r.run_id for r in reopened.get_runs()] == [result.run_id]
