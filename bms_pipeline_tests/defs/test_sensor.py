"""The sensor requests what is not materialized, whatever its cursor says."""

from __future__ import annotations

import os
import shutil
import time

import dagster as dg

from bms_pipeline.definitions import build_definitions
from bms_pipeline.defs.resources import BmsPipelineResource
from bms_pipeline.defs.slides.sensors import new_slides_sensor
from bms_pipeline_tests.conftest import ConvertedRoot
from bms_pipeline_tests.helpers import write_test_slide

NEW_SLIDE = "FEDCBA9876543210FEDCBA9876543210_1_bm"


def test_a_fresh_cursor_on_a_converted_collection_requests_nothing(
    cli_converted: ConvertedRoot,
) -> None:
    root = cli_converted.root
    slides = root / "raw" / "slides"
    defs = build_definitions(str(root))
    with dg.DagsterInstance.from_config(str(root / ".dagster")) as instance:

        def tick():
            context = dg.build_sensor_context(
                instance=instance,
                cursor=None,
                definitions=defs,
                resources={"bms": BmsPipelineResource(data_root=str(root))},
            )
            return new_slides_sensor(context)

        # As when `dagster dev` or the daemon starts on this root for the first time.
        first = tick()
        assert first.run_requests == [] and first.dynamic_partitions_requests == []  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]

        # A new slide and a changed one (its Index.dat rewritten an hour ago) are requested.
        changed = min(slides.glob("*.mrxs")).stem
        index = slides / changed / "Index.dat"
        saved = index.stat()
        past = time.time() - 1800
        try:
            write_test_slide(slides, slide_id=NEW_SLIDE)
            for path in [slides / f"{NEW_SLIDE}.mrxs", *(slides / NEW_SLIDE).iterdir()]:
                os.utime(path, (past, past))
            os.utime(index, (past, past))
            second = tick()
            reasons = {r.partition_key: r.tags["bms/reason"] for r in second.run_requests}  # pyright: ignore[reportAttributeAccessIssue, reportOptionalIterable, reportOptionalMemberAccess]
            assert reasons == {
                NEW_SLIDE: "new slide",
                changed: "slide files changed on disk",
            }
            (added,) = second.dynamic_partitions_requests  # pyright: ignore[reportAttributeAccessIssue, reportGeneralTypeIssues, reportOptionalMemberAccess]
            assert list(added.partition_keys) == [NEW_SLIDE]
        finally:
            os.utime(index, ns=(saved.st_atime_ns, saved.st_mtime_ns))
            (slides / f"{NEW_SLIDE}.mrxs").unlink(missing_ok=True)
            shutil.rmtree(slides / NEW_SLIDE, ignore_errors=True)
        assert tick().run_requests == []  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
