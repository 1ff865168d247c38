"""What `run` does for speed, in one place: `run_speedups`, entered by the `run` command
(and by each of its `--jobs` worker processes) and by nothing else. Importing this module
does nothing (bms_pipeline_tests/test_import_purity.py). Each trick was measured alone and
kept because it saves more than 0.1 s per slide (docs/benchmarks.md, "Process-wide tricks").

**The collector.** The slide steps import wsidicomizer, highdicom, DuckDB and the rest lazily,
so that loading the definitions (the UI, a sensor tick) stays quick. `run` freezes everything
loaded so far out of the garbage collector's sight (`gc.freeze`), and before its first slide
loads the steps' libraries and freezes them too: these objects live as long as the process,
and each full collection pass during a conversion or an ANN build walked all of them,
holding the GIL (whole `run` of the wide slide 0.8 s less, about 0.2 s per demo slide). Two
tables that the libraries load on first use belong to the same once-per-process set:
highdicom's tables of the standard (about 200,000 objects parsed from JSON in 0.2 s, read by
every ANN object it builds) and the shipped cell-label vocabulary. Everything is unfrozen
when the command returns.

**The exit.** After the console script's command returns, CPython's finalization clears
every module and runs the collector over what they held: 1.3 s after a wide-slide `run`,
1.5 s of CPU per demo slide. The operating system frees the memory anyway. So when `run` is
the console script's command (`bms-pipeline run`, `python -m bms_pipeline.cli run`), an exit
handler is registered when the command starts, so every exit handler registered later
(temporary folders, DuckDB) runs before it; the two registered earlier (`logging.shutdown`
and multiprocessing's exit function, which removes its temporary folder and joins worker
processes) it runs itself. Every non-daemon thread has finished by then (the interpreter
joins them before any exit handler); only the teardown is skipped, by `os._exit` with the
command's exit code. If the command raises, the handler is unregistered and the process
exits as usual, with its traceback; `main()` called in a process of its own (the tests)
never registers it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SLIDE_STEP_MODULES = (
    "bms_pipeline.core.dicom.idc_conversion",  # wsidicomizer, wsidicom, OpenSlide, pydicom
    "bms_pipeline.core.dicom.series_readback",
    "bms_pipeline.core.dicom.thumbnail",  # Pillow
    "bms_pipeline.core.annotations.ann",  # highdicom, polars
    "bms_pipeline.core.validation.slide",
    "bms_pipeline.core.clinical.tables",
    "bms_pipeline.core.index",
    "bms_pipeline.core.atomic_outputs",  # DuckDB
)


def load_first_use_tables() -> None:
    """Load the tables the slide steps read on first use (see the module docstring).

    highdicom has no public loader for its tables of the standard; constructing a bare
    `SOPClass` of the ANN SOP class (public API) reads all three (it asks whether the IOD
    has a Content Date), and the throwaway instance is dropped."""
    import highdicom as hd

    from bms_pipeline.core.annotations.ann import ANN_SOP_CLASS_UID
    from bms_pipeline.core.annotations.labels import cell_labels

    cell_labels()
    hd.SOPClass(
        study_instance_uid=hd.UID(),
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        sop_class_uid=ANN_SOP_CLASS_UID,
        instance_number=1,
        modality="ANN",
    )


class RunSpeedups:
    """The handle `run_speedups` gives the command."""

    def __init__(self) -> None:
        self._code: list[int] = []
        self._loaded = False

    def load_slide_steps(self) -> None:
        """Import the slide steps' libraries and first-use tables, and freeze them too, once,
        when slides are about to run."""
        if self._loaded:
            return
        for name in SLIDE_STEP_MODULES:
            importlib.import_module(name)
        load_first_use_tables()
        gc.freeze()
        self._loaded = True

    def exit_with(self, code: int) -> int:
        """The command's exit code, also the one the exit without teardown uses."""
        self._code.append(code)
        return code


@contextmanager
def run_speedups(console_script: bool = False) -> Iterator[RunSpeedups]:
    """Freeze what is loaded for the block; with `console_script`, arm the exit without the
    interpreter's teardown (see the module). The freeze is undone on return, the exit
    handler on an exception."""
    speed = RunSpeedups()
    if console_script:
        atexit.register(_exit_without_teardown, speed._code)
    gc.freeze()
    try:
        yield speed
    except BaseException:
        if console_script:
            atexit.unregister(_exit_without_teardown)
        raise
    finally:
        gc.unfreeze()


def _exit_without_teardown(code: list[int]) -> None:
    if not code:  # the command did not return: the usual exit
        return
    if "multiprocessing.util" in sys.modules:
        # No public name: the handler `multiprocessing.util` registers at import.
        sys.modules["multiprocessing.util"]._exit_function()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced
            stream.flush()
    os._exit(code[-1])
