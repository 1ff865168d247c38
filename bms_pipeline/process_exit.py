"""The console script's exit without the interpreter's teardown.

After `main` returns, CPython's finalization clears every module and runs the garbage
collector over what they held: 1.3 s after a wide-slide `run`, and 4.3-5.4 s (wall, on a
loaded 2-core machine) after `run --force` of two demo slides (measured). The operating
system frees the memory anyway. `run_then_exit` registers its exit handler when the command
starts (never at import), so every exit handler registered later (temporary folders, DuckDB)
runs before it. The two registered earlier, when `bms_pipeline.cli` imported `logging` and
`concurrent.futures`, it runs itself: `logging.shutdown` and multiprocessing's exit function
(which removes its temporary folder and joins worker processes). Every non-daemon thread has
finished by then (the interpreter joins them before any exit handler); only the teardown is
skipped, by `os._exit` with `main`'s exit code. An exception exits as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def run_then_exit(main: Callable[[], int]) -> NoReturn:
    """`sys.exit(main())`, then the exit without the teardown (see the module)."""
    code: list[int] = []
    atexit.register(_exit_without_teardown, code)
    code.append(main())
    sys.exit(code[0])


def _exit_without_teardown(code: list[int]) -> None:
    if not code:  # `main` raised: the usual exit, with its traceback
        return
    if "multiprocessing.util" in sys.modules:
        # No public name: the handler `multiprocessing.util` registers at import.
        sys.modules["multiprocessing.util"]._exit_function()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced
            stream.flush()
    os._exit(code[0])
