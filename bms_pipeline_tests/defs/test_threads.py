"""A conversion gets the cores the pool leaves it, from whichever entry point it starts."""

from __future__ import annotations

import dagster as dg
import yaml

from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.instance import CONVERSION_POOL
from bms_pipeline.resources import BmsPipelineResource, conversion_threads


def test_threads_follow_the_conversions_holding_pool_slots() -> None:
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(CONVERSION_POOL, 2)
        assert conversion_threads(instance, 4) == 4  # alone (e.g. `dagster asset materialize`)
        storage.claim_concurrency_slot(CONVERSION_POOL, "run-a", "sm_series")
        assert conversion_threads(instance, 4) == 4  # the slot held is this conversion's
        storage.claim_concurrency_slot(CONVERSION_POOL, "run-b", "sm_series")
        assert conversion_threads(instance, 4) == 2  # two conversions share the cores
    assert conversion_threads(None, 3) == 3
    # An explicit thread count (the CLI's --jobs) wins.
    collection = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
    resource = BmsPipelineResource(data_root="/nowhere", workers=1)
    assert resource.conversion_settings(collection).workers == 1
