"""Which process runs a run, so a run whose process died can be told from a live one.

An identity is `host:pid:start-time`: the pid alone can be reused by another process after
the first one died. Dagster-free; `defs.runs` tags runs with it and reaps the dead ones.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

WORKER_TAG = "bms/worker"
"""Run tag `host:pid:start-time` of the process executing the run (pid alone can be reused)."""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may contain spaces, so split after its ")".
    return stat.rsplit(")", 1)[1].split()[19]


def worker_identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def local_pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (whatever its start time)."""
    return worker_alive(f"{socket.gethostname()}:{pid}:")


def worker_alive(identity: str) -> bool:
    """False only when the worker is known to be gone: same host, and no such process (or a
    different process now holding its pid). A worker on another host counts as alive."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return not started or _process_start(pid) in ("", started)
