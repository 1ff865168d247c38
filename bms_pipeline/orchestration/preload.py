"""The libraries a slide's steps import, loaded before its runs start.

The steps import wsidicomizer, highdicom, DuckDB and the rest lazily, so that loading the
definitions (the UI, a sensor tick) stays quick. A process about to convert slides loads
them first and freezes everything loaded so far out of the garbage collector's sight
(`gc.freeze`): these objects live as long as the process, and each full collection pass
during a conversion or an ANN build walked all of them, holding the GIL. Measured on the
wide slide (190,528 x 14,376 px), the whole `run` took about 0.8 s less, and the steps
after the conversion 0.55 s less (3.1 -> 2.55 s).

Two tables that the libraries load on first use belong to the same once-per-process set:
highdicom's tables of the standard (SOP class -> IOD -> modules -> attributes, about
200,000 objects parsed from JSON in 0.2 s, read by every ANN object it builds) and the
shipped cell-label vocabulary (`cell_labels`, 0.07 s). Loaded after the freeze, they were
parsed inside the first slide's `ann_series` and then walked by every later full pass
(a full pass took 0.15 s with them).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SLIDE_STEP_MODULES = (
    "bms_pipeline.core.dicom.idc",  # wsidicomizer, wsidicom, OpenSlide, pydicom
    "bms_pipeline.core.dicom.series",
    "bms_pipeline.core.dicom.thumbnail",  # Pillow
    "bms_pipeline.core.annotations.ann",  # highdicom, polars
    "bms_pipeline.core.validation.slide",
    "bms_pipeline.core.clinical.tables",
    "bms_pipeline.core.index",
    "bms_pipeline.core.store",  # DuckDB
)


def load_first_use_tables() -> None:
    """Load the tables the slide steps read on first use (see the module docstring).

    highdicom has no public loader for its tables of the standard; constructing a bare
    `SOPClass` of the ANN SOP class reads all three (it asks whether the IOD has a Content
    Date), and the throwaway instance is dropped."""
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


def _load_slide_steps() -> None:
    for name in SLIDE_STEP_MODULES:
        importlib.import_module(name)
    load_first_use_tables()


@contextmanager
def frozen_while_running() -> Iterator[Callable[[], None]]:
    """Freeze every object tracked so far (the modules and definitions a command has loaded)
    for the duration of the block, and give a function that loads the slide steps'
    libraries and tables and freezes them too, for when slides are about to run (see the
    module). Everything is unfrozen on exit, so the process, and any caller of
    `bms_pipeline.cli.main` in it, is left as it was. The one place `run` touches the
    collector."""
    gc.freeze()

    def load_slide_steps() -> None:
        _load_slide_steps()
        gc.freeze()

    try:
        yield load_slide_steps
    finally:
        gc.unfreeze()
