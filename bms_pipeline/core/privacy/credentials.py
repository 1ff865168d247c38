"""A URL's user and password never leave the process.

A URL given with `user:password@` is split at once into the URL without them (what is
printed, logged, stored, used as a code version or description) and the credentials, which
only an authenticated session sees. What the process does print goes through `redact`, which
replaces every secret it was told of (`remember_secret`) and any `user:password@` of a URL,
and `RedactingFilter` does the same to every log record: a safety net for a library's
message that quotes a URL it was given.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Credentials:
    """User and password taken out of a URL (never shown: no value in the repr)."""

    user: str = field(repr=False)
    password: str = field(repr=False)


def split_credentials(url: str) -> tuple[str, Credentials | None]:
    """(the URL without `user[:password]@`, the credentials it held or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit(parts._replace(netloc=host))
    credentials = Credentials(unquote(parts.username or ""), unquote(parts.password or ""))
    remember_secret(credentials.password)
    remember_secret(f"{parts.username or ''}:{parts.password or ''}")
    return clean, credentials


def without_credentials(url: str) -> str:
    """The URL without its user and password, for messages."""
    return split_credentials(url)[0]


def remember_secret(value: str | None) -> None:
    """A value `redact` and the log filter replace wherever it appears in this process."""
    if value and len(value) >= 3:  # shorter would mask ordinary text, not a secret
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every `user:password@` of a URL and every remembered secret masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message (arguments included) before any handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
