"""The Dagster instance under the data root: a dagster.yaml sized for this machine.

Conversions are memory-bound (wsidicomizer holds chunks of decoded tiles per worker), so
the number of slides converting at once comes from memory, and wsidicomizer's threads per
conversion from the cores left for each, so that runs x threads never oversubscribe the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CONVERSION_POOL = "wsi_conversion"
GIB = 1 << 30
MEMORY_PER_CONVERSION = 3 * GIB


@dataclass(frozen=True)
class MachineBudget:
    cores: int
    memory_bytes: int

    @classmethod
    def detect(cls) -> MachineBudget:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            memory = 4 * GIB
        return cls(cores=max(1, cores), memory_bytes=memory)

    @property
    def concurrent_conversions(self) -> int:
        """Slides converting at once: what fits in memory, and no more than the cores."""
        return max(1, min(self.cores, self.memory_bytes // MEMORY_PER_CONVERSION))

    @property
    def threads_per_conversion(self) -> int:
        return max(1, self.cores // self.concurrent_conversions)


def render_dagster_yaml(budget: MachineBudget) -> str:
    slots = budget.concurrent_conversions
    return f"""\
# Written by bms-pipeline for this machine ({budget.cores} cores, {budget.memory_bytes / GIB:.0f} GiB).
# SQLite storage in this folder; see README.md ("Scaling out") for Postgres.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: {slots}
  pools:
    default_limit: {slots}   # the {CONVERSION_POOL} pool caps parallel conversions
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  free_slots_after_run_end_seconds: 60   # a crashed run gives its pool slot back
"""


def ensure_instance_home(home: Path, budget: MachineBudget | None = None) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml if it has none (an existing one is kept)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(render_dagster_yaml(budget or MachineBudget.detect()), encoding="utf-8")
    return config
