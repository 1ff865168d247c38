"""Running the definitions outside `dagster dev`: the Dagster instance the CLI keeps under the
data root (SQLite) or on Postgres, planning and running slides, stopping on a signal, the
staleness adapter, and Celery workers. Dagster code, like `defs/`; the rules it applies come
from `core/`."""
