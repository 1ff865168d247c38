"""Importing the package changes no process-wide state: every module of `bms_pipeline`,
imported in a fresh interpreter, adds no exit handler, no SQLAlchemy event listener and no
`gc.freeze`, and leaves the signal handlers and the collector as they were."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import ast, atexit, gc, importlib, json, pkgutil, signal, sys
    from pathlib import Path

    import bms_pipeline  # the package's own __init__ is measured below too
    modules = sorted(
        m.name for m in pkgutil.walk_packages(bms_pipeline.__path__, "bms_pipeline.")
    )
    # What the modules import at their top level from other packages, imported first: a
    # library may register its own exit handler when imported (logging does), and that is
    # not the package's doing.
    root = Path(bms_pipeline.__file__).parent
    foreign = set()
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                foreign.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                foreign.add(node.module)
                foreign.update(f"{node.module}.{a.name}" for a in node.names)
    for name in sorted(foreign):
        if name.split(".")[0] in ("bms_pipeline", "__future__"):
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # a name imported from a module, not a module

    import sqlalchemy.event.registry as registry

    def state():
        return {
            "atexit": atexit._ncallbacks(),
            "frozen": gc.get_freeze_count(),
            "gc_enabled": gc.isenabled(),
            "sqlalchemy_listeners": len(registry._key_to_collection),
            "signals": [
                repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)
            ],
        }

    for name in [n for n in sys.modules if n.split(".")[0] == "bms_pipeline"]:
        del sys.modules[name]  # imported again below, under measurement
    before = state()
    imported = []
    for name in ["bms_pipeline", "bms_pipeline.definitions", *modules]:
        importlib.import_module(name)
        imported.append(name)
    print(json.dumps({"before": before, "after": state(), "imported": imported}))
    """
)


def test_importing_every_module_of_the_package_changes_no_process_state() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "bms_pipeline.cli" in result["imported"]
    assert "bms_pipeline.orchestration.instance" in result["imported"]
    assert result["after"] == result["before"]
