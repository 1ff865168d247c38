"""Metadata overrides: wsidicom metadata JSON (the form `wsidicomizer -m` takes) that corrects
what a scanner file gets wrong, collection-wide and per slide.

Files, both optional: `<root>/overrides/collection.json` and
`<root>/overrides/<slide_id>.json`. Later layers win: the file's own metadata, then ours
(identity, descriptions, specimen), then the collection override, then the slide's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from marshmallow import ValidationError
from wsidicom.metadata import WsiMetadata  # pyright: ignore[reportMissingTypeStubs]
from wsidicom.metadata.schema.json.wsi import WsiMetadataJsonSchema  # pyright: ignore[reportMissingTypeStubs]
from wsidicomizer.metadata import WsiDicomizerMetadata  # pyright: ignore[reportMissingTypeStubs]

from bms_pipeline.core.layout import DataLayout


class OverrideError(ValueError):
    """An override file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class MetadataOverride:
    path: Path
    metadata: WsiMetadata
    raw: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Only what the file sets (nulls and empty lists dropped), for the UI."""

        def prune(value: Any) -> Any:
            if isinstance(value, dict):
                # A JSON object; isinstance binds no type arguments.
                kept = {k: prune(v) for k, v in cast("dict[str, Any]", value).items()}
                return {k: v for k, v in kept.items() if v not in (None, [], {})}
            return value

        return {"file": str(self.path), "sets": prune(self.raw)}


def override_paths(root: Path, slide_id: str) -> list[Path]:
    """The slide's override files that exist, in the order they apply."""
    return [p for p in DataLayout(root).override_candidates(slide_id) if p.is_file()]


def _load_metadata(text: str) -> object:
    """wsidicom's JSON schema load (its post_load makes a `WsiMetadata`); marshmallow leaves
    `Schema.loads`'s keyword arguments unannotated, hence partially unknown."""
    return WsiMetadataJsonSchema().loads(text)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


def load_override(path: Path) -> MetadataOverride:
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
        metadata = _load_metadata(text)
    except (OSError, json.JSONDecodeError, ValidationError, TypeError, ValueError) as exc:
        raise OverrideError(f"{path}: not valid wsidicom metadata JSON ({exc})") from exc
    if not isinstance(metadata, WsiMetadata):
        raise OverrideError(f"{path}: not valid wsidicom metadata JSON")
    return MetadataOverride(path, metadata, raw)


def load_overrides(root: Path, slide_id: str) -> tuple[MetadataOverride, ...]:
    return tuple(load_override(p) for p in override_paths(root, slide_id))


def apply_overrides(metadata: WsiMetadata, overrides: Sequence[MetadataOverride]) -> WsiMetadata:
    """Each override wins over what is below it, field by field."""
    merged = WsiDicomizerMetadata.from_metadata(metadata)
    for override in overrides:
        merged = merged.merge(override.metadata, None)
    return merged
