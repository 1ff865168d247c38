"""`preload_slide_steps` (orchestration/preload.py), in a fresh interpreter of its own:
what a process about to convert slides has loaded and frozen before its first run."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from bms_pipeline.orchestration.preload import SLIDE_STEP_MODULES, preload_slide_steps
import highdicom._standard_utils as standard  # private: only to see the cache filled
from bms_pipeline.core.annotations.labels import cell_labels
before = gc.get_freeze_count()
preload_slide_steps()
print(json.dumps({
    "frozen": gc.get_freeze_count() - before,
    "modules": [m for m in SLIDE_STEP_MODULES if m not in sys.modules],
    "highdicom_tables": [
        f.cache_info().currsize
        for f in (standard.get_sop_class_iod_map, standard.get_iod_module_map,
                  standard.get_module_attribute_map)
    ],
    "labels": cell_labels.cache_info().currsize,
}))
"""


def test_preload_loads_the_step_libraries_and_their_first_use_tables_then_freezes_them() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["modules"] == []
    # highdicom's three tables of the standard and the label vocabulary are loaded once...
    assert state["highdicom_tables"] == [1, 1, 1]
    assert state["labels"] == 1
    # ...before the freeze, which covers them (the module-attribute map alone is about
    # 200,000 objects).
    assert state["frozen"] > 200_000
