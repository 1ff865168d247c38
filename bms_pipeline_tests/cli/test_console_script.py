"""What `run` does for speed (`cli.speed.run_speedups`): the console script ends without the
interpreter's teardown and loses nothing by it; the collector's freeze holds the slide steps'
libraries while the slides run and is undone when the command returns."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


def test_the_exit_keeps_the_code_runs_every_handler_and_flushes(tmp_path: Path) -> None:
    proc = _python(
        """
        import atexit, logging, multiprocessing, os, sys, tempfile, threading, time
        from bms_pipeline.cli.speed import run_speedups

        class Teardown:
            def __del__(self):
                print("teardown ran")

        def command():
            global marker, kept
            marker = Teardown()  # deleted only by the interpreter's teardown
            kept = tempfile.TemporaryDirectory(dir=".")  # removed by its exit-time finalizer
            open("folder", "w").write(kept.name)
            # multiprocessing's own temporary folder, removed by its exit handler
            open("mp-folder", "w").write(multiprocessing.util.get_temp_dir())
            atexit.register(lambda: print("handler ran", flush=False))
            logging.basicConfig(filename="log.txt")
            logging.getLogger("x").warning("logged")
            worker = threading.Thread(target=lambda: (time.sleep(0.3), print("thread done")))
            worker.start()
            print("unflushed", end="")
            return 3

        def main():
            with run_speedups(console_script=True) as speed:
                return speed.exit_with(command())

        import multiprocessing.util
        sys.exit(main())
        """,
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("unflushed")
    assert "thread done" in proc.stdout and "handler ran" in proc.stdout
    assert not Path(tmp_path, (tmp_path / "folder").read_text()).exists()
    assert not Path((tmp_path / "mp-folder").read_text()).exists()
    assert "logged" in (tmp_path / "log.txt").read_text()
    assert "teardown ran" not in proc.stdout  # what is skipped, and all that is


def test_an_exception_still_exits_as_usual(tmp_path: Path) -> None:
    proc = _python(
        """
        import sys
        from bms_pipeline.cli.speed import run_speedups

        def main():
            with run_speedups(console_script=True):
                raise RuntimeError("boom")

        sys.exit(main())
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr


def test_the_console_script_exits_with_mains_code(tmp_path: Path) -> None:
    """`run` on a root without slides exits 2 (the code `main` returns), through `entry`."""
    script = Path(sys.executable).with_name("bms-pipeline")
    proc = subprocess.run(
        [str(script), "run", "--data-root", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "leaked" not in proc.stderr


SPEEDUPS_PROBE = """
import atexit, gc, json, sys
from bms_pipeline.cli import speed as speed_module
from bms_pipeline.cli.speed import SLIDE_STEP_MODULES, run_speedups
from bms_pipeline.core.annotations.labels import cell_labels

before = gc.get_freeze_count()
with run_speedups() as speed:
    frozen_at_start = gc.get_freeze_count() - before
    speed.load_slide_steps()
    frozen_with_steps = gc.get_freeze_count() - before
    missing = [m for m in SLIDE_STEP_MODULES if m not in sys.modules]
    labels = cell_labels.cache_info().currsize
    tracked = len(gc.get_objects())
handlers = atexit._ncallbacks()
atexit.unregister(speed_module._exit_without_teardown)  # removes it only if it was there
armed = atexit._ncallbacks() != handlers
print(json.dumps({
    "frozen_at_start": frozen_at_start,
    "frozen_with_steps": frozen_with_steps,
    "tracked_while_frozen": tracked,
    "modules": missing,
    "labels": labels,
    "frozen_after": gc.get_freeze_count(),
    "tracked_after": len(gc.get_objects()),
    "exit_armed": armed,
}))
"""


def test_the_step_libraries_are_loaded_and_out_of_the_collectors_sight_for_the_block_only(
    tmp_path: Path,
) -> None:
    """Behaviour, not the libraries' tables: inside the block the steps' libraries are loaded
    and the objects loaded so far are not walked by the collector (`gc.get_objects` lists
    what a collection would walk); after it the process is as it was, and `main()` in a
    process of its own (not the console script) never arms the exit."""
    done = _python(SPEEDUPS_PROBE, tmp_path)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["modules"] == []
    assert state["labels"] == 1  # the label vocabulary is loaded before the freeze
    assert state["frozen_at_start"] > 0
    # What the steps loaded is frozen too, and the collector walks only what came after.
    assert state["frozen_with_steps"] > state["frozen_at_start"]
    assert state["tracked_while_frozen"] < state["frozen_with_steps"]
    # ...and undone when the block ends.
    assert state["frozen_after"] == 0
    assert state["tracked_after"] > state["frozen_with_steps"]
    assert state["exit_armed"] is False
