"""Which PostgreSQL the tests use (tests/postgres_server.py): PAYFLOW_TEST_POSTGRES, else the machine's if it
answers, else an embedded one."""

from __future__ import annotations

import socket

import pytest

from tests import postgres_server
from tests.postgres_server import EMBEDDED, MACHINE_URL


def _never_asked() -> bool:
    raise AssertionError("the machine's server was probed although PAYFLOW_TEST_POSTGRES is set")


@pytest.mark.parametrize("setting", [None, "", "  "])
def test_unset_uses_the_machine_server_when_it_answers(setting: str | None) -> None:
    assert postgres_server.choose(setting, lambda: True) == MACHINE_URL


@pytest.mark.parametrize("setting", [None, ""])
def test_unset_with_nothing_listening_starts_an_embedded_server(setting: str | None) -> None:
    assert postgres_server.choose(setting, lambda: False) == EMBEDDED


def test_embedded_is_embedded_even_when_the_machine_server_answers() -> None:
    assert postgres_server.choose("embedded", _never_asked) == EMBEDDED


def test_a_url_is_used_as_given() -> None:
    url = "postgresql://payflow@db.internal:6543/ci"
    assert postgres_server.choose(f" {url}\n", _never_asked) == url


def test_the_probe_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as listening, socket.socket() as bound_only:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound_only.bind(("127.0.0.1", 0))  # holds the port, so nothing else listens there: refused
        assert postgres_server.answers(*listening.getsockname())
        assert not postgres_server.answers(*bound_only.getsockname())
