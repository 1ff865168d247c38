"""Benchmarks: scripts run by hand (``uv run python -m ...``), never collected by pytest."""
