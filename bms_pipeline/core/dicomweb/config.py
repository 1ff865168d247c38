"""Where to publish: `--dicomweb-url`, else `$BMS_DICOMWEB_URL`, else `dicomweb.url` in
collection.yaml; credentials only ever from the environment (never in config or run storage)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

URL_ENV = "BMS_DICOMWEB_URL"
USER_ENV = "BMS_DICOMWEB_USER"
PASSWORD_ENV = "BMS_DICOMWEB_PASSWORD"  # noqa: S105 (the variable's name, not a secret)
TOKEN_ENV = "BMS_DICOMWEB_TOKEN"  # noqa: S105


@dataclass(frozen=True)
class DicomwebTarget:
    url: str  # the DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    source: str  # which setting named it, for the asset's metadata

    @property
    def fingerprint(self) -> str:
        """Short stable id of the server, part of the asset's code version: publishing to another
        server makes every slide's dicomweb_series stale, so `run` publishes there too."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:10]


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"DICOMweb URL {url!r}: must start with http:// or https://")
    return url


def url_from_collection_yaml(path: Path) -> str | None:
    """`dicomweb: {url: ...}` of a local collection.yaml, or None."""
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = data.get("dicomweb") or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: `dicomweb` must be a mapping with a `url` key")  # noqa: TRY004
    url = section.get("url")
    return str(url) if url else None


def resolve_target(
    explicit: str | None = None, collection_yaml: Path | None = None
) -> DicomwebTarget | None:
    """The configured server, or None when nothing names one (the asset is then left out)."""
    if explicit:
        return DicomwebTarget(normalise_url(explicit), "--dicomweb-url")
    env = os.environ.get(URL_ENV, "").strip()
    if env:
        return DicomwebTarget(normalise_url(env), f"${URL_ENV}")
    if collection_yaml is not None:
        url = url_from_collection_yaml(collection_yaml)
        if url:
            return DicomwebTarget(normalise_url(url), f"{collection_yaml.name}: dicomweb.url")
    return None


def auth_from_env() -> tuple[str, object | None, dict[str, str]]:
    """(description, requests auth, extra headers): bearer token, basic user/password, or none."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return "bearer token", None, {"Authorization": f"Bearer {token}"}
    user = os.environ.get(USER_ENV)
    if user:
        from requests.auth import HTTPBasicAuth

        return f"basic ({user})", HTTPBasicAuth(user, os.environ.get(PASSWORD_ENV, "")), {}
    return "none", None, {}
