"""Starting children under /usr/bin/time and reading back wall, CPU and peak RSS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.conversion.common import MODULE, PROJECT_ROOT


@dataclass
class Proc:
    wall: float
    max_rss_mb: float
    user: float
    sys: float
    returncode: int
    log: Path
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# Children are started by a small runner process, not by this one: on Linux a child's
# ru_maxrss starts from the RSS high-water mark of the process it was forked from, so
# forking from this (large) process would report at least our own RSS for every child.
RUNNER = r"""
import json, os, subprocess, sys, threading, time
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(job["cmd"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=job["cwd"], env=job["env"])
        timer = threading.Timer(job["timeout"], proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"wall": wall, "rc": proc.returncode, "maxrss_kib": usage.ru_maxrss,
                      "user": usage.ru_utime, "sys": usage.ru_stime}), flush=True)
"""
_runner: subprocess.Popen[str] | None = None


def start_runner() -> None:
    global _runner
    if _runner is None:
        _runner = subprocess.Popen(
            [sys.executable, "-S", "-c", RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )


def run_measured(
    cmd: Sequence[str], log: Path, cwd: Path = PROJECT_ROOT, timeout: float = 3600
) -> Proc:
    """Run `cmd` as a child (of the runner); wall time around it, peak RSS and CPU times
    from wait4."""
    start_runner()
    assert _runner is not None and _runner.stdin is not None and _runner.stdout is not None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    job = {"cmd": list(cmd), "log": str(log), "cwd": str(cwd), "env": env, "timeout": timeout}
    _runner.stdin.write(json.dumps(job) + "\n")
    _runner.stdin.flush()
    r = json.loads(_runner.stdout.readline())
    return Proc(r["wall"], r["maxrss_kib"] / 1024.0, r["user"], r["sys"], r["rc"], log)


def run_child(kind: str, spec: dict[str, Any], log: Path, wrapper: Sequence[str] = ()) -> Proc:
    result = log.with_suffix(".json")
    spec = dict(spec, result=str(result))
    proc = run_measured(
        [*wrapper, sys.executable, "-m", MODULE, "_child", kind, json.dumps(spec)], log
    )
    if proc.ok and result.exists():
        proc.result = json.loads(result.read_text(encoding="utf-8"))
    return proc


def tool(name: str) -> str | None:
    """An executable from the project venv (next to the interpreter) or PATH."""
    for candidate in (Path(sys.executable).parent / name, PROJECT_ROOT / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


def openslide_library() -> str:
    import openslide_bin

    lib_dir = Path(openslide_bin.__file__).parent
    return str(min(lib_dir.glob("libopenslide.so*")))


def ensure_orthanc(install: bool) -> tuple[str | None, str]:
    exe = shutil.which("OrthancWSIDicomizer")
    if exe:
        return exe, ""
    if not install:
        return None, "OrthancWSIDicomizer not installed (and --no-install given)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "OrthancWSIDicomizer not installed and apt-get is not usable (not root?)"
    print("installing orthanc-wsi with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = ["apt-get", "install", "-y", "orthanc-wsi"]
    done = subprocess.run(install_cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, env=env)
        done = subprocess.run(install_cmd, check=False, capture_output=True, text=True, env=env)
    exe = shutil.which("OrthancWSIDicomizer")
    if exe is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"apt-get install orthanc-wsi failed: {tail[0]}"
    return exe, ""
