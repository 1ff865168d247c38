"""A URL's user and password are split off at once and masked in whatever the process says."""

from __future__ import annotations

import logging

import pytest

from bms_pipeline.core.dicomweb import config
from bms_pipeline.core.privacy.credentials import (
    RedactingFilter,
    redact,
    split_credentials,
    without_credentials,
)

URL = "http://alice:S3cret%2FPassw0rd@dicom.example.org:8042/dicom-web"


def test_a_urls_credentials_are_split_off_and_the_url_keeps_host_port_and_path() -> None:
    clean, credentials = split_credentials(URL)
    assert clean == "http://dicom.example.org:8042/dicom-web"
    assert credentials is not None
    assert (credentials.user, credentials.password) == ("alice", "S3cret/Passw0rd")
    assert "alice" not in repr(credentials) and "S3cret" not in repr(credentials)
    assert split_credentials(clean) == (clean, None)
    assert without_credentials(URL) == clean


def test_redact_masks_userinfo_and_every_secret_the_process_was_told_of() -> None:
    split_credentials("https://bob:Another-Secret-42@host/x")  # remembered
    text = redact("GET https://carol:pw1234@host/y failed; sent Another-Secret-42 again")
    assert "pw1234" not in text and "carol" not in text and "Another-Secret-42" not in text
    assert "https://***@host/y" in text


def test_a_log_record_that_quotes_a_url_with_credentials_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("some.library")
    caplog.handler.addFilter(RedactingFilter())  # as log_setup does to every root handler
    try:
        with caplog.at_level(logging.WARNING):
            logger.warning("could not reach %s", "http://dave:Hunter2-Hunter2@host/dicom-web")
    finally:
        caplog.handler.filters.clear()
    assert "Hunter2" not in caplog.text and "dave" not in caplog.text
    assert "http://***@host/dicom-web" in caplog.text


def test_the_dicomweb_target_never_holds_the_credentials_in_its_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(config.URL_ENV, raising=False)
    target = config.resolve_target(URL + "/")
    assert target is not None
    assert target.url == "http://dicom.example.org:8042/dicom-web"
    assert "S3cret" not in repr(target) and "alice" not in repr(target)
    assert target.credentials is not None and target.credentials.user == "alice"
    # the server's identity (the asset's code version) does not depend on the credentials
    assert target.fingerprint == config.resolve_target(target.url).fingerprint  # type: ignore[union-attr]
    description, auth, _ = config.auth_from_env(target.credentials)
    assert "alice" not in description and auth is not None


def test_a_malformed_url_is_named_by_its_setting_not_echoed() -> None:
    with pytest.raises(ValueError) as raised:
        config.resolve_target("ftp://erin:Secret-Erin-99@host/dicom-web")
    assert "Secret-Erin-99" not in str(raised.value) and "erin" not in str(raised.value)
    assert "--dicomweb-url" in str(raised.value)


def test_environment_credentials_are_described_without_the_user_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(config.TOKEN_ENV, raising=False)
    monkeypatch.setenv(config.USER_ENV, "frank-the-user")
    monkeypatch.setenv(config.PASSWORD_ENV, "frank-password")
    description, auth, _ = config.auth_from_env()
    assert description == "basic" and auth is not None
