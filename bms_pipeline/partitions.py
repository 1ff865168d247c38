"""One partition per slide: the slide_id (`<patient_id>_<n>_bm`). Keys are append-only."""

import dagster as dg

slides_partitions = dg.DynamicPartitionsDefinition(name="slides")
