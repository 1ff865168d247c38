"""A demo root converted by two real `bms-pipeline run` processes started together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bms_pipeline_tests.defs.cli_runs import Finished, demo_root, finish, start_run


@dataclass(frozen=True)
class ConvertedRoot:
    root: Path
    first: Finished  # the run that converted
    second: Finished  # the one that waited for it, then found nothing to do


@pytest.fixture(scope="session")
def cli_converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertedRoot:
    """Two runs started at once on a new root (the instance is created by both at once):
    shared by the concurrency, console, crash and sensor tests, which only read it."""
    root = demo_root(tmp_path_factory.mktemp("cli") / "data")
    procs = [start_run(root), start_run(root)]
    a, b = (finish(p) for p in procs)
    waited = [r for r in (a, b) if "waiting for the other" in r.stdout]
    first, second = (b, a) if waited == [a] else (a, b)
    return ConvertedRoot(root, first, second)
