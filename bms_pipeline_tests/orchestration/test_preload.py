"""`frozen_while_running` (orchestration/preload.py), in a fresh interpreter of its own: inside
the block the step libraries are loaded on request and out of the collector's sight; after it
the process is as it was."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from bms_pipeline.orchestration.preload import SLIDE_STEP_MODULES, frozen_while_running
from bms_pipeline.core.annotations.labels import cell_labels
before = gc.get_freeze_count()
with frozen_while_running() as load_slide_steps:
    load_slide_steps()
    inside = gc.get_freeze_count() - before
    missing = [m for m in SLIDE_STEP_MODULES if m not in sys.modules]
    labels = cell_labels.cache_info().currsize
print(json.dumps({
    "frozen": inside,
    "modules": missing,
    "labels": labels,
    "frozen_after": gc.get_freeze_count(),
}))
"""


def test_the_step_libraries_are_loaded_and_frozen_for_the_block_only() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["modules"] == []
    assert state["labels"] == 1  # the label vocabulary is loaded before the freeze
    # The freeze covers what was loaded, highdicom's tables of the standard included (the
    # module-attribute map alone is about 200,000 objects)...
    assert state["frozen"] > 200_000
    # ...and is undone when the block ends (`gc.unfreeze` has no other granularity: what
    # the interpreter froze at start-up is unfrozen with it).
    assert state["frozen_after"] == 0
