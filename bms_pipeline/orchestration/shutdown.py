"""SIGINT and SIGTERM stop a `bms-pipeline run` within seconds, runs marked canceled.

Dagster replaces the SIGINT/SIGTERM handlers while it executes a run and only acts on them
inside a step; a run waiting for a pool slot never looks (and SIGTERM would otherwise kill
the process without cleanup). So a watcher thread learns of every signal through
`signal.set_wakeup_fd`, which Dagster's handlers do not change: it marks this process's runs
CANCELING (Dagster then ends an interrupted step's run as CANCELED), forwards the signal to
worker processes, and if the process is still running after a grace period, marks its runs
canceled, frees their pool slots, removes its staging folders and exits. Outputs are written
to staging and renamed into place, so nothing half-written is left in out/. The command that
installs it uninstalls it when it returns (`uninstall`): the wakeup fd and the SIGTERM
handler are as they were, and the watcher thread ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import DagsterInstance

GRACE_SECONDS = 5.0
_INSTALLED: GracefulStop | None = None
EXIT_INTERRUPTED = 130


class GracefulStop:
    """Installed once per process (main thread); `requested` is set after the first signal."""

    def __init__(
        self, instance_getter: Callable[[], DagsterInstance | None], staging: Path | None
    ) -> None:
        self._instance_getter = instance_getter
        self._staging = staging
        self.requested = threading.Event()
        self.current_slides: set[str] = set()
        self._hard = threading.Event()

    def install(self) -> GracefulStop:
        """Start watching (once per process: a pool worker reuses its first watcher)."""
        global _INSTALLED
        if _INSTALLED is not None:
            _INSTALLED._instance_getter, _INSTALLED._staging = self._instance_getter, self._staging
            _INSTALLED.current_slides = set()
            return _INSTALLED
        _INSTALLED = self
        # Dagster redirects fds 1 and 2 into its compute logs during a step: keep the terminal.
        self._stderr = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._write_fd = write_fd
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        # SIGTERM behaves as SIGINT outside Dagster's execution too (KeyboardInterrupt).
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="bms-stop").start()
        return self

    def uninstall(self) -> None:
        """Put the wakeup fd and the SIGTERM handler back as `install` found them and end the
        watcher (main thread; for the command that installed it, when it returns)."""
        global _INSTALLED
        if _INSTALLED is not self:
            return
        _INSTALLED = None
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        if self._previous_sigterm is not None:  # None: a handler not set from Python
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        os.close(self._write_fd)  # the watcher reads the end of the pipe and returns
        os.close(self._stderr)
        self._stderr = 2

    def _watch(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 16)
            if not data:  # uninstalled
                os.close(read_fd)
                return
            signals = {s for s in data if s in (signal.SIGINT, signal.SIGTERM)}
            if not signals:
                continue
            if self.requested.is_set():
                self.hard_stop("second signal")
            self.requested.set()
            name = signal.Signals(min(signals)).name
            self._say(f"\n{name}: stopping (runs marked canceled; again to stop at once)")
            self._mark_canceling()
            import multiprocessing

            for child in multiprocessing.active_children():
                if child.pid:
                    os.kill(child.pid, signal.SIGTERM)
            if not self._hard.wait(GRACE_SECONDS):
                self.hard_stop(f"still running {GRACE_SECONDS:.0f} s after {name}")

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(getattr(self, "_stderr", 2), (text + "\n").encode())

    def _my_runs(self, instance) -> list:
        import dagster as dg

        from bms_pipeline.core.worker_identity import WORKER_TAG, worker_identity

        me = worker_identity()
        active = [
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
            dg.DagsterRunStatus.CANCELING,
        ]
        return [
            r.dagster_run
            for r in instance.get_run_records(
                filters=dg.RunsFilter(statuses=active, tags={WORKER_TAG: me})
            )
        ]

    def _mark_canceling(self) -> None:
        instance = self._instance_getter()
        if instance is None:
            return
        try:
            for run in self._my_runs(instance):
                if run.status != run.status.CANCELING:
                    instance.report_run_canceling(
                        run, message="bms-pipeline run received a stop signal"
                    )
        except Exception as exc:  # noqa: BLE001 - stopping must go on
            self._say(f"could not mark runs canceling: {exc}")

    def hard_stop(self, why: str) -> None:
        """Cancel this process's runs, free their slots, drop its staging folders, exit."""
        self._hard.set()
        instance = self._instance_getter()
        try:
            if instance is not None:
                for run in self._my_runs(instance):
                    instance.report_run_canceled(run, message=f"bms-pipeline run stopped: {why}")
                    storage = instance.event_log_storage
                    if storage.supports_global_concurrency_limits:
                        storage.free_concurrency_slots_for_run(run.run_id)
                self.remove_my_staging(instance)
        finally:
            self._say(f"stopped ({why})")
            os._exit(EXIT_INTERRUPTED)

    def remove_my_staging(self, instance) -> None:
        """The staging folders of this process's slides, unless another run is alive: staging
        names do not say whose they are, and another process may be converting the same
        slide (then the next `run` removes ours, see `instance.remove_stale_outputs`)."""
        from bms_pipeline.core.worker_identity import worker_identity
        from bms_pipeline.defs.runs import live_workers

        if self._staging is None or not self._staging.is_dir():
            return
        if live_workers(instance) - {worker_identity()}:
            return
        for slide_id in list(self.current_slides):
            for entry in self._staging.glob(f"{slide_id}-*"):
                shutil.rmtree(entry, ignore_errors=True)
