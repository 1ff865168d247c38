"""Conformance results as tables: one slide's summary and the report over all slides.

The rules for what counts: an Error is any dicom3tools error; a Warning is unexplained
unless `known_noise` names the reason it is expected (see `dicom3tools.KNOWN_NOISE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from bms_pipeline.core.validation.dicom3tools import messages_frame


@dataclass(frozen=True)
class ValidationSummary:
    errors: int
    warnings: int
    unexplained_warnings: int
    by_message: pl.DataFrame
    """The 20 most frequent (level, message) pairs, errors first."""


def errors_of(frame: pl.DataFrame) -> pl.DataFrame:
    """The Error rows of validation messages: what withholds a slide from publication
    (`core.dicomweb.publish.ensure_publishable`) and fails its blocking check."""
    return frame.filter(pl.col("level") == "Error")


def summarize(frame: pl.DataFrame) -> ValidationSummary:
    """Counts of one slide's (or all slides') messages by level and by message."""
    warnings = frame.filter(pl.col("level") == "Warning")
    return ValidationSummary(
        errors=errors_of(frame).height,
        warnings=warnings.height,
        unexplained_warnings=warnings.filter(pl.col("known_noise").is_null()).height,
        by_message=(
            frame.group_by("level", "message")
            .len()
            .sort(["level", "len"], descending=[False, True])
            .head(20)
        ),
    )


def combine_slide_results(files: Sequence[Path]) -> pl.DataFrame:
    """Every slide's messages in one frame, with the schema even when no slide has any."""
    return pl.concat([messages_frame([], ""), *(pl.read_parquet(f) for f in files)], how="vertical")


def report_summary(parquet: Path) -> pl.DataFrame:
    """Per level and message: its known-noise reason, occurrences and the slides it is in."""
    with duckdb.connect() as con:
        cursor = con.execute(
            """
            select level, message, coalesce(known_noise, '') as known_noise,
                   count(*) as occurrences, count(distinct slide_id) as slides
            from read_parquet(?) group by all order by level, occurrences desc
            """,
            [str(parquet)],
        )
        columns = [d[0] for d in cursor.description]
        return pl.DataFrame(cursor.fetchall(), schema=columns, orient="row")
