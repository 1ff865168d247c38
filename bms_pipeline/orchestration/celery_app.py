"""The Celery app that `bms-pipeline worker` serves (`celery -A bms_pipeline.orchestration.celery_app`).

dagster-celery's own `dagster_celery.app` reads its broker from a generated config module;
this one is built from the same `CelerySettings` the executor uses (`BMS_CELERY_BROKER`,
`BMS_CELERY_BACKEND`), so a worker and the runs that send it steps cannot disagree.
"""

from __future__ import annotations

from dagster_celery.config import DEFAULT_CONFIG, dict_wrapper
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from bms_pipeline.orchestration.deploy import CelerySettings

_settings = CelerySettings.from_env()

app = make_app(
    {
        "broker": _settings.broker,
        "backend": _settings.backend,
        "include": [],
        "config_source": dict_wrapper(dict(DEFAULT_CONFIG, **_settings.config_source)),
    }
)
execute_plan = create_task(app)
