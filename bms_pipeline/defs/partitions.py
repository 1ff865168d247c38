"""One partition per slide: the slide_id (`<patient_id>_<n>_bm`). Keys are append-only."""

import dagster as dg

SLIDES_PARTITIONS = "slides"
"""The dynamic partitions definition's name: one key per slide id."""
slides_partitions = dg.DynamicPartitionsDefinition(name=SLIDES_PARTITIONS)

INVENTORY_KEY = dg.AssetKey("mrxs_slide")
"""The per-slide inventory asset, whose materializations record each slide's file signature."""


def recorded_signature(instance: dg.DagsterInstance, slide_id: str) -> str | None:
    """The file signature of the slide's last inventory (None if never inventoried): what the
    CLI's planning and the sensor compare the files on disk with."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INVENTORY_KEY, asset_partitions=[slide_id]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("file_signature")
    return str(value.value) if value is not None else None
