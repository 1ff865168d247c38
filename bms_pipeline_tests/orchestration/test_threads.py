"""A conversion gets the cores the pool leaves it, from whichever entry point it starts."""

from __future__ import annotations

import dagster as dg
import yaml

from bms_pipeline.core.budget import CONVERSION_POOL, MachineBudget
from bms_pipeline.core.collection import DEFAULT_COLLECTION_YAML, CollectionConfig
from bms_pipeline.defs.resources import BmsPipelineResource, conversion_threads

FOUR_CORES = MachineBudget(cores=4, memory_bytes=24 << 30)


def test_threads_follow_the_conversions_holding_pool_slots() -> None:
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(CONVERSION_POOL, 2)
        assert (
            conversion_threads(instance, FOUR_CORES) == 4
        )  # alone (e.g. `dagster asset materialize`)
        storage.claim_concurrency_slot(CONVERSION_POOL, "run-a", "sm_series")
        assert conversion_threads(instance, FOUR_CORES) == 4  # the slot held is this conversion's
        storage.claim_concurrency_slot(CONVERSION_POOL, "run-b", "sm_series")
        assert conversion_threads(instance, FOUR_CORES) == 2  # two conversions share the cores
    assert conversion_threads(None, MachineBudget(cores=3, memory_bytes=24 << 30)) == 3
    # An explicit thread count (the CLI's --jobs) wins.
    collection = CollectionConfig.from_dict(yaml.safe_load(DEFAULT_COLLECTION_YAML))
    resource = BmsPipelineResource(data_root="/nowhere", workers=1)
    assert resource.conversion_settings(collection).workers == 1


def test_the_pool_limit_the_asset_pool_and_the_worker_count_read_one_budget() -> None:
    from bms_pipeline.core.budget import GIB, PARALLEL_MIN_BYTES
    from bms_pipeline.defs.slides.assets import sm_series
    from bms_pipeline.orchestration.instance import render_dagster_yaml

    budget = MachineBudget(cores=8, memory_bytes=7 * GIB)  # memory for 2 conversions
    assert budget.concurrent_conversions == 2
    assert budget.threads_per_conversion == 4
    config = yaml.safe_load(render_dagster_yaml(budget))
    assert config["concurrency"]["pools"]["default_limit"] == budget.concurrent_conversions
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == budget.concurrent_conversions
    assert sm_series.op.pool == CONVERSION_POOL
    assert budget.worker_processes(PARALLEL_MIN_BYTES) == 2
    assert budget.worker_processes(PARALLEL_MIN_BYTES - 1) == 1
    # A run's shape (`bms-pipeline run`): what fits, never more than its slides, `--jobs`
    # wins; the cores shared among the slides at once.
    assert budget.run_shape(PARALLEL_MIN_BYTES, slides=5) == (2, 4)
    assert budget.run_shape(PARALLEL_MIN_BYTES, slides=1) == (1, 8)
    assert budget.run_shape(PARALLEL_MIN_BYTES - 1, slides=5) == (1, 8)
    assert budget.run_shape(0, slides=5, requested=3) == (3, 2)
    assert budget.run_shape(0, slides=0) == (1, 8)
