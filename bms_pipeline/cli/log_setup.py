"""How the command line logs: our own INFO lines; every library at WARNING unless -v.

An allow-list like the properties': a library not named anywhere (dicomweb_client's INFO line
per request, urllib3's connection notes) stays quiet too, and no library's message reaches the
console unless it is a warning. Every handler of the root logger masks credentials
(`core.privacy.credentials.RedactingFilter`) whatever the level.
"""

from __future__ import annotations

import logging

OWN_LOGGER = "bms_pipeline"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """Root (every library) at WARNING, `bms_pipeline` at INFO; -v: everything at DEBUG
    (Dagster's own debug log in the runs follows `RunConfig.dagster_log_level`)."""
    from bms_pipeline.core.privacy.credentials import RedactingFilter

    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format=LOG_FORMAT)
    root = logging.getLogger()
    root.setLevel(level)
    logging.getLogger(OWN_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
