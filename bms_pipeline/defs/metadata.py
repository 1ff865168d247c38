"""Helpers that turn polars frames into Dagster UI metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    import polars as pl


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    """`dagster/column_schema` for a frame."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
    )


def markdown_table(frame: pl.DataFrame, empty: str = "(none)") -> dg.MetadataValue:
    """A small frame as a markdown table for the UI (pipes escaped)."""
    if frame.height == 0:
        return dg.MetadataValue.md(empty)

    def cell(value: object) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))
