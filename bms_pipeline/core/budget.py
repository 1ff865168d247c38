"""The machine budget: how many slides convert at once and with how many threads each.

Conversions are memory-bound (wsidicomizer holds chunks of decoded tiles per worker), so
the number of slides converting at once comes from memory, and wsidicomizer's threads per
conversion from the cores left for each, so that runs x threads never oversubscribe the CPU.
The Dagster instance's pool limit, the conversion asset's pool and the CLI's worker count
all read this one object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

CONVERSION_POOL = "wsi_conversion"
"""The Dagster pool every conversion holds a slot of while it runs."""
GIB = 1 << 30
MEMORY_PER_CONVERSION = 3 * GIB
PARALLEL_MIN_BYTES = 256 << 20
"""Below this much input, one worker process: starting more (each imports Dagster and
wsidicomizer, several seconds) costs more than it saves."""


class RunShape(NamedTuple):
    """How a run over several slides uses the machine."""

    slides_at_once: int
    """Worker processes, each converting one slide at a time (1: in the command's process)."""
    threads_per_conversion: int
    """wsidicomizer threads of each conversion."""


@dataclass(frozen=True)
class MachineBudget:
    cores: int
    memory_bytes: int

    @classmethod
    def detect(cls) -> MachineBudget:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
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
        """Threads of each conversion when the pool is full."""
        return self.threads_beside(self.concurrent_conversions)

    def threads_beside(self, running: int) -> int:
        """Threads of one conversion while `running` conversions (itself included) hold a
        pool slot: one slide alone gets the whole machine, several share it."""
        return max(1, self.cores // max(1, running))

    def worker_processes(self, input_bytes: int) -> int:
        """Slides at once for a run over `input_bytes` of slides."""
        return self.concurrent_conversions if input_bytes >= PARALLEL_MIN_BYTES else 1

    def run_shape(self, input_bytes: int, slides: int, requested: int | None = None) -> RunShape:
        """Slides at once and threads each for a run of `slides` slides over `input_bytes`:
        `requested` (`run --jobs`) or what fits in memory, one when the work is too small to
        repay starting worker processes, never more than the slides; the cores shared among
        them."""
        at_once = max(1, min(requested or self.worker_processes(input_bytes), slides or 1))
        return RunShape(at_once, self.threads_beside(at_once))
