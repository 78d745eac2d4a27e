"""`?pool_size=N` in a PostgreSQL URL sizes the store's pool and is not passed on as a server setting."""

from __future__ import annotations

import pytest

from payflow import errors
from payflow.store import postgres


def test_pool_size_is_taken_out_of_the_url() -> None:
    url, size = postgres._pool_size("postgresql://u:p%40ss@db:5432/pay?search_path=x&pool_size=4&application_name=a")
    assert size == 4
    assert url == "postgresql://u:p%40ss@db:5432/pay?search_path=x&application_name=a"


def test_without_pool_size_the_url_is_unchanged() -> None:
    assert postgres._pool_size("postgresql://db/pay?search_path=x") == ("postgresql://db/pay?search_path=x",
                                                                         postgres.POOL_SIZE)


@pytest.mark.parametrize("bad", ["0", "-1", "four", ""])
def test_a_bad_pool_size_is_a_settings_error(bad: str) -> None:
    with pytest.raises(errors.SettingsError, match="pool_size"):
        postgres._pool_size(f"postgresql://u:secret@db/pay?pool_size={bad}")
