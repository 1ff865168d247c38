"""One partition per slide: the slide_id (`<patient_id>_<n>_bm`). Keys are append-only."""

import dagster as dg

SLIDES_PARTITIONS = "slides"
"""The dynamic partitions definition's name: one key per slide id."""
slides_partitions = dg.DynamicPartitionsDefinition(name=SLIDES_PARTITIONS)

INVENTORY_KEY = dg.AssetKey("mrxs_slide")
"""The per-slide inventory asset, whose materializations record each slide's file signature."""
