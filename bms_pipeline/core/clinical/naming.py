"""IDC's BigQuery-safe column names (DESIGN.md section 5).

IDC loads every clinical table into BigQuery under names derived from the source headers
with one fixed rule, so that a user can find a source column again from its BigQuery name.
The rule, applied in this order:

1. surrounding whitespace is removed (it is never part of a header, e.g. a stray BOM
   space or a trailing blank in a spreadsheet cell);
2. ``/``, ``-`` and space become ``_``;
3. every other character outside ``[A-Za-z0-9_]`` is dropped (this also drops a UTF-8 BOM,
   umlauts and punctuation);
4. everything is lower-cased;
5. a name starting with a digit gets the prefix ``c_``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TO_UNDERSCORE = re.compile(r"[/\- ]")
_DROPPED = re.compile(r"[^A-Za-z0-9_]")
# BigQuery refuses these prefixes (case-insensitive) and names longer than 300 characters.
_RESERVED_PREFIXES = ("_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colon_")
_MAX_LENGTH = 300


class ColumnNameError(ValueError):
    """A header that has no usable BigQuery name, or two headers that end up with the same."""


def bigquery_name(header: str) -> str:
    """The BigQuery-safe name of one source header; raises ColumnNameError if none is left.

    >>> bigquery_name("Eosinophils/100 leukocytes")
    'eosinophils_100_leukocytes'
    >>> bigquery_name("24h-Urin (mg)")
    'c_24h_urin_mg'
    """
    name = _TO_UNDERSCORE.sub("_", header.strip())
    name = _DROPPED.sub("", name).lower()
    if name[:1].isdigit():
        name = f"c_{name}"
    if not name:
        raise ColumnNameError(f"header {header!r} has no characters left for a BigQuery name")
    if name.startswith(_RESERVED_PREFIXES):
        raise ColumnNameError(
            f"header {header!r} gives {name!r}, which starts with a prefix BigQuery reserves"
        )
    if len(name) > _MAX_LENGTH:
        raise ColumnNameError(
            f"header {header!r} gives a name longer than {_MAX_LENGTH} characters"
        )
    return name


def bigquery_names(headers: Sequence[str]) -> list[str]:
    """BigQuery-safe names for a whole header row, refusing two headers with one name.

    Two source columns silently merged into one would lose data, so a collision is an error
    that names both headers.
    """
    names: list[str] = []
    seen: dict[str, str] = {}
    for header in headers:
        name = bigquery_name(header)
        if name in seen:
            raise ColumnNameError(
                f"headers {seen[name]!r} and {header!r} both become the BigQuery name {name!r}"
            )
        seen[name] = header
        names.append(name)
    return names
