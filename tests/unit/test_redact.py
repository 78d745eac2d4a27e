"""`logs.redact_url`: what every log line and message shows of a database URL."""

from __future__ import annotations

import pytest

from payflow import logs


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:secret@h:5432/db?search_path=x", "postgresql://u:***@h:5432/db?search_path=x"),
    ("postgresql://u@h/db?password=secret&search_path=x", "postgresql://u@h/db?password=***&search_path=x"),
    ("postgres://h/db?sslmode=require&PASSWORD=secret", "postgres://h/db?sslmode=require&PASSWORD=***"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an unescaped @ in the password
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),  # an unescaped / in the password
    ("postgresql://u:a%40b@h/db", "postgresql://u:***@h/db"),
    ("u:secret@h/db", "u:***@h/db"),  # no scheme at all
    ("mysql://u:secret@h/db", "mysql://u:***@h/db"),
])
def test_passwords_are_hidden(url: str, shown: str) -> None:
    assert logs.redact_url(url) == shown
    assert "secret" not in logs.redact_url(url)


@pytest.mark.parametrize("url", [
    "sqlite:///payflow.db", "sqlite:////var/lib/payflow/a@b.db", "postgresql://u@h:5432/db",
    "postgresql://h/db?search_path=x&application_name=a@b", "postgresql://[::1]:5432/db", "",
])
def test_urls_without_a_password_are_unchanged(url: str) -> None:
    assert logs.redact_url(url) == url
