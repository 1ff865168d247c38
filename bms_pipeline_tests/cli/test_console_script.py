"""The console script ends without the interpreter's teardown, and loses nothing by it."""

from __future__ import annotations

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
        from bms_pipeline.process_exit import run_then_exit

        class Teardown:
            def __del__(self):
                print("teardown ran")

        def main():
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

        import multiprocessing.util
        run_then_exit(main)
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
        from bms_pipeline.process_exit import run_then_exit

        def main():
            raise RuntimeError("boom")

        run_then_exit(main)
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
