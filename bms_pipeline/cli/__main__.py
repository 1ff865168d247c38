"""`python -m bms_pipeline.cli`, as the console script."""

if __name__ == "__main__":
    from bms_pipeline.cli import entry

    entry()
