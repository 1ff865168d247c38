"""Where to publish: `--dicomweb-url`, else `$BMS_DICOMWEB_URL`, else `dicomweb.url` in
collection.yaml; credentials from the environment (`$BMS_DICOMWEB_USER`/`_PASSWORD` or
`_TOKEN`), never in config or run storage. A URL given with `user:password@` is split at once
(`core.privacy.credentials`): the target's `url`, which is printed, logged and part of the
asset's description and code version, never holds them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from bms_pipeline.core.privacy.credentials import Credentials, remember_secret, split_credentials

URL_ENV = "BMS_DICOMWEB_URL"
USER_ENV = "BMS_DICOMWEB_USER"
PASSWORD_ENV = "BMS_DICOMWEB_PASSWORD"  # noqa: S105 (the variable's name, not a secret)
TOKEN_ENV = "BMS_DICOMWEB_TOKEN"  # noqa: S105
TIMEOUT_ENV = "BMS_DICOMWEB_TIMEOUT"


@dataclass(frozen=True)
class DicomwebTarget:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (no user, no password)
    source: str  # which setting named it, for the asset's metadata
    credentials: Credentials | None = field(default=None, repr=False, compare=False)
    """The URL's own `user:password@`, if it had one (kept in the process only)."""

    @property
    def fingerprint(self) -> str:
        """Short stable id of the server, part of the asset's code version: publishing to another
        server makes every slide's dicomweb_series stale, so `run` publishes there too."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:10]


def normalise_url(url: str, source: str = "the DICOMweb URL") -> tuple[str, Credentials | None]:
    """(the URL without credentials or a trailing slash, its credentials). The error names
    the setting, not the value (which may hold a password)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"DICOMweb URL of {source}: must start with http:// or https://")
    return split_credentials(url)


def _target(url: str, source: str) -> DicomwebTarget:
    clean, credentials = normalise_url(url, source)
    return DicomwebTarget(clean, source, credentials)


def url_from_collection_yaml(path: Path) -> str | None:
    """`dicomweb: {url: ...}` of a local collection.yaml, or None."""
    if not path.is_file():
        return None
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section: object = data.get("dicomweb") or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: `dicomweb` must be a mapping with a `url` key")  # noqa: TRY004
    # A YAML mapping's keys and values may be any YAML scalar or node.
    url = cast("dict[object, object]", section).get("url")
    return str(url) if url else None


def resolve_target(
    explicit: str | None = None,
    collection_yaml: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> DicomwebTarget | None:
    """The configured server, or None when nothing names one (the asset is then left out).
    Resolved once where the settings come in (the command line's `RunConfig`, the code
    location's definitions) and handed on as the target itself."""
    if explicit:
        return _target(explicit, "--dicomweb-url")
    from_env = env.get(URL_ENV, "").strip()
    if from_env:
        return _target(from_env, f"${URL_ENV}")
    if collection_yaml is not None:
        url = url_from_collection_yaml(collection_yaml)
        if url:
            return _target(url, f"{collection_yaml.name}: dicomweb.url")
    return None


def auth_from_env(
    credentials: Credentials | None = None,
) -> tuple[str, object | None, dict[str, str]]:
    """(description, requests auth, extra headers): the URL's own credentials, else a bearer
    token, basic user/password from the environment, or none. The description names the
    kind only (no user name: it is half of the credentials)."""
    from requests.auth import HTTPBasicAuth

    if credentials is not None:
        return "basic (from the URL)", HTTPBasicAuth(credentials.user, credentials.password), {}
    token = os.environ.get(TOKEN_ENV)
    if token:
        remember_secret(token)
        return "bearer token", None, {"Authorization": f"Bearer {token}"}
    user = os.environ.get(USER_ENV)
    if user:
        password = os.environ.get(PASSWORD_ENV, "")
        remember_secret(password)
        return "basic", HTTPBasicAuth(user, password), {}
    return "none", None, {}
