"""The consensus rule for expert cell labels (DESIGN.md section 2), shared by the annotation
pipeline and the synthetic data generator so both apply exactly one rule."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

from bms_pipeline.core.reference import reference_path

if TYPE_CHECKING:
    import polars as pl

NO_CONSENSUS = "no_consensus_found"


@cache
def renames() -> dict[str, str]:
    with reference_path("label_renames.csv").open(encoding="utf-8", newline="") as fh:
        return {row["source_label"]: row["label"] for row in csv.DictReader(fh)}


@cache
def source_names() -> dict[str, tuple[str, ...]]:
    """Canonical label -> the source names that rename to it, in file order."""
    out: dict[str, list[str]] = {}
    for source, label in renames().items():
        out.setdefault(label, []).append(source)
    return {label: tuple(names) for label, names in out.items()}


def apply_rename(label: str) -> str:
    """Map an old or German source label (label_renames.csv) to its current label.

    Labels without a rename pass through, so current labels are unchanged.
    """
    label = label.strip()
    return renames().get(label, label)


def consensus_label(labels: Sequence[str]) -> str:
    """The consensus of one cell's expert labels, in session order.

    Renames are applied first, so ``lymphoblast`` and ``lymphoid_precursor_cell`` count as one
    vote each for the same label; blank labels are ignored. A consensus needs two or more
    votes and a most-frequent label with at least half of them, else it is
    ``no_consensus_found``. A tie (two labels with exactly half, e.g. ``[a, b]`` or
    ``[a, b, b, a]``) goes to the label whose first vote came in the earliest session, so
    the first expert's call decides and the result never depends on label spelling.
    """
    votes = [apply_rename(label) for label in labels if label.strip()]
    if len(votes) < 2:
        return NO_CONSENSUS
    counts = Counter(votes)  # keeps first-vote order, which the tie-break relies on
    best = max(counts.values())
    if 2 * best < len(votes):
        return NO_CONSENSUS
    return next(label for label, count in counts.items() if count == best)


def disagreement_warnings(
    disagreements: pl.DataFrame, csv_name: str = "cells.csv", shown: int = 5
) -> list[str]:
    """The first `shown` rows of a disagreements frame (``SlideAnnotations.disagreements``)
    as warnings for the console: a finding about the source, not an error (the published
    consensus is the source's label). Each names the line and the cell, and both labels."""
    return [
        f"{csv_name} line {row['line']} (cell {row['cell_id']}): original_consensus_label "
        f"{row['given_renamed']!r}, the sessions' votes give {row['computed']!r}; "
        "the source's label is published"
        for row in disagreements.head(shown).iter_rows(named=True)
    ]
