"""The conversion benchmark (`bench_conversion.py` runs it), one module per concern."""
