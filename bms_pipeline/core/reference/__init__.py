"""Reference tables shipped with the package (copies of ../shared/reference, the source of truth)."""

from importlib.resources import files
from pathlib import Path


def reference_path(name: str) -> Path:
    """Path of a shipped reference CSV, e.g. ``cell_labels.csv``."""
    return Path(str(files(__package__) / name))
