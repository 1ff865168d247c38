"""Running the definitions outside `dagster dev`: the Dagster instance the CLI keeps under the
data root (SQLite) or on Postgres, running what the one decision names (`core.run_decision`,
its facts from `defs.facts`), stopping on a signal, and Celery workers. Dagster code, like `defs/`; the rules it applies come
from `core/`."""
