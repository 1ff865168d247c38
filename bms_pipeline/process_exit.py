"""A command-line process that ends without the interpreter's teardown.

After `main` returns, CPython's finalization clears every module and runs the garbage
collector over what they held: 1.3 s after a wide-slide `run` (measured; 0.7 s with the long-
lived objects frozen, and freezing them all leaves nanobind, under DuckDB, printing "leaked"
warnings). The operating system frees the memory anyway. `skip_teardown` arms an exit
handler registered before any other (this module is imported by the package's
`__init__`), so it runs last: every other exit handler and every non-daemon thread has
finished by then (temporary folders removed, logs flushed, locks released); only the
teardown is skipped, by `os._exit` with the same exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

_code: int | None = None


def skip_teardown(code: int) -> None:
    """End the process with `code` once the exit handlers have run (see the module)."""
    global _code
    _code = code


def _exit_without_teardown() -> None:
    if _code is None:  # not armed: an exception, or a library import; the usual exit
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or replaced
            stream.flush()
    os._exit(_code)


atexit.register(_exit_without_teardown)
