"""The command line's settings: read once into a frozen `RunConfig` (the documented
variables as defaults), handed to worker processes as an argument, never through the
process's own environment."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from bms_pipeline.cli import build_parser, main
from bms_pipeline.cli.config import RunConfig
from bms_pipeline.core.dicomweb import config as dicomweb

URL = "http://alice:S3cret%2FPassw0rd@dicom.example.org:8042/dicom-web"
SETTINGS_ENV = (
    "BMS_DATA_ROOT",
    "BMS_OUTPUT_ROOT",
    "BMS_DAGSTER_POSTGRES_URL",
    "DAGSTER_HOME",
    dicomweb.URL_ENV,
    dicomweb.USER_ENV,
    dicomweb.PASSWORD_ENV,
    dicomweb.TOKEN_ENV,
)


def test_a_worker_is_handed_the_clean_url_and_the_credentials_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["run", "--data-root", str(tmp_path), "--dicomweb-url", URL])
    config = RunConfig.from_args(args).with_dicomweb()
    # As the process pool hands it to a worker (bytes this test made itself).
    handed = pickle.loads(pickle.dumps(config))  # noqa: S301
    target = handed.dicomweb
    assert target is not None and target.url == "http://dicom.example.org:8042/dicom-web"
    assert target.credentials is not None
    assert target.credentials.user == "alice"
    assert target.credentials.password == "S3cret/Passw0rd"
    assert "S3cret" not in repr(handed) and "alice" not in repr(handed)
    # Nothing went through this process's environment.
    assert not any(os.environ.get(name) for name in SETTINGS_ENV)
    assert dicomweb.resolve_target(None) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        handed.force = True


def test_the_documented_variables_are_the_defaults_and_the_arguments_win(tmp_path: Path) -> None:
    env = {
        "BMS_DATA_ROOT": str(tmp_path / "data"),
        "BMS_OUTPUT_ROOT": "s3://bucket/out",
        "BMS_DAGSTER_POSTGRES_URL": "postgresql://u@db/bms",
    }
    from_env = RunConfig.from_args(build_parser().parse_args(["status"]), env=env)
    assert from_env.data_root == tmp_path / "data"
    assert from_env.output_root == "s3://bucket/out"
    assert from_env.postgres_url == "postgresql://u@db/bms"
    given = build_parser().parse_args(
        ["-v", "run", "--data-root", str(tmp_path / "x"), "--output-root", "out", "--jobs", "2"]
    )
    config = RunConfig.from_args(given, env=env)
    assert config.data_root == tmp_path / "x"
    assert config.output_root == str(Path("out").resolve())
    assert (config.jobs, config.verbose, config.dagster_log_level) == (2, True, "DEBUG")


def test_a_command_leaves_the_environment_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    write_demo_dataset(tmp_path / "root", slides=1, seed=3)
    before = dict(os.environ)
    code = main(
        [
            "-v",
            "status",
            "--data-root",
            str(tmp_path / "root"),
            "--output-root",
            str(tmp_path / "o"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert " new " in printed
    assert dict(os.environ) == before


def test_run_leaves_the_process_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`main(["run", ...])` in-process (here stopped by an unknown --slide after the instance,
    the stop-signal watcher and the speed-ups are set up): the signal handlers, the wakeup fd,
    the collector and the environment are as they were."""
    import gc
    import signal
    import threading

    from bms_pipeline.core.synthetic.demo import write_demo_dataset

    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    write_demo_dataset(tmp_path / "root", slides=1, seed=4)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    environment = dict(os.environ)
    code = main(["run", "--data-root", str(tmp_path / "root"), "--slide", "no-such-slide"])
    assert code == 2
    assert "no such slide" in capsys.readouterr().err
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    assert wakeup == -1
    assert gc.get_freeze_count() == 0
    assert dict(os.environ) == environment
    watchers = [t for t in threading.enumerate() if t.name == "bms-stop"]
    for watcher in watchers:
        watcher.join(timeout=10)  # it ends on reading the closed pipe's end
    assert not any(w.is_alive() for w in watchers)
