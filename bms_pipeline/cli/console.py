"""What `bms-pipeline run` prints: one live line per slide, then a summary naming every fault.

The progress comes from what Dagster records anyway (the runs' step events in the instance)
and from the series files appearing in staging, read by a polling thread: the conversion
code needs no hooks, and slides converting in worker processes show up the same way.
On a terminal the lines update in place (rich); otherwise each slide prints one plain line
when it is done.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TextIO

POLL_SECONDS = 1.0
"""Between polls of the instance. Each poll holds the GIL for a few milliseconds of SQLite
and deserialization, taken from the conversion threads of the same process: at 0.5 s and
with whole run records read each time, the poll cost about 7 % of a wide slide's CPU."""


@dataclass
class SlideLine:
    slide_id: str
    index: int
    total: int
    stage: str = "queued"
    detail: str = ""
    started: float | None = None
    finished: float | None = None
    result: str = ""
    seen_runs: dict[str, str | None] = field(default_factory=dict)  # run id -> event cursor

    def render(self) -> str:
        elapsed = ""
        if self.started is not None:
            elapsed = f"{(self.finished or time.monotonic()) - self.started:6.1f} s"
        state = (self.result or self.stage)[:16]
        return f"[{self.index}/{self.total}] {self.slide_id} {elapsed:>8}  {state:<16} {self.detail}".rstrip()


class ProgressBoard:
    """Live progress of the slides of one `run`; use as a context manager."""

    def __init__(
        self,
        instance,
        staging: Path,
        slide_ids: list[str],
        out: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self._instance = instance
        self._staging = staging
        self._out = out or sys.stdout
        self._live_wanted = self._out.isatty() if live is None else live
        self.lines = {sid: SlideLine(sid, i, len(slide_ids)) for i, sid in enumerate(slide_ids, 1)}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._live_wanted and self.lines:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._renderable(),
                console=Console(file=self._out),
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="bms-progress")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.update(self._renderable())
            self._live.stop()

    # -- called by the CLI -------------------------------------------------------------------
    def start(self, slide_id: str) -> None:
        with self._lock:
            line = self.lines[slide_id]
            line.started = time.monotonic()
            line.stage = "starting"

    def finish(self, slide_id: str, ok: bool, skipped: bool = False, detail: str = "") -> None:
        with self._lock:
            line = self.lines[slide_id]
            line.finished = time.monotonic()
            line.started = line.started or line.finished
            line.result = "up-to-date" if skipped and ok else ("ok" if ok else "FAILED")
            line.detail = detail or line.detail
            if self._live is None:
                print(line.render(), file=self._out, flush=True)
            else:
                self._live.update(self._renderable())

    # -- polling ---------------------------------------------------------------------------
    def _renderable(self):
        from rich.text import Text

        with self._lock:  # one screen line per slide, cropped to the terminal's width
            text = Text("\n".join(line.render() for line in self.lines.values()))
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with contextlib.suppress(Exception):  # the display must never break a run
                self._refresh()
            if self._live is not None:
                self._live.update(self._renderable())

    def _refresh(self) -> None:
        import dagster as dg

        from bms_pipeline.orchestration.operations import PARTITION_TAG

        with self._lock:
            active = [line for line in self.lines.values() if line.started and not line.finished]
        for line in active:
            # Only the newest run's id (a slide may take two runs of `slides_job`: inventory,
            # then what its new facts need): whole run
            # records would deserialize the run's snapshot ids and tags each poll.
            run_ids = self._instance.get_run_ids(
                filters=dg.RunsFilter(tags={PARTITION_TAG: line.slide_id}), limit=1
            )
            if not run_ids:
                continue
            run_id = run_ids[0]
            cursor = line.seen_runs.get(run_id)
            connection = self._instance.get_records_for_run(run_id, cursor=cursor)
            line.seen_runs[run_id] = connection.cursor
            for record in connection.records:
                self._apply(line, record.event_log_entry)
            if line.stage == "sm_series":
                written = sum(1 for _ in self._staging.glob(f"{line.slide_id}-sm-*/sm/*.dcm"))
                if written:
                    line.detail = f"{written} instance(s) written"

    @staticmethod
    def _apply(line: SlideLine, entry) -> None:
        event = entry.dagster_event
        if event is None:
            return
        kind = event.event_type_value
        if kind == "STEP_START" and event.step_key:
            line.stage = event.step_key
            line.detail = ""
        elif kind == "ENGINE_EVENT" and "blocked by limit for pool" in (entry.user_message or ""):
            line.detail = "waiting for a wsi_conversion slot"
        elif kind == "ASSET_MATERIALIZATION" and event.step_key == "sm_series":
            md = event.event_specific_data.materialization.metadata
            parts = [
                f"{md[k].value} {label}"
                for k, label in (("instances", "inst"), ("levels", "levels"))
                if k in md
            ]
            if "megapixels_per_second" in md:
                parts.append(f"{md['megapixels_per_second'].value} MP/s")
            line.detail = ", ".join(parts)
