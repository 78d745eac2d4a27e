"""Request ids and lease tokens: unique, fixed-width lowercase hex."""

from __future__ import annotations

import re

from payflow import tokens


def test_lease_tokens_are_unique_hex() -> None:
    made = [tokens.lease_token() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{16}", token) for token in made)


def test_request_ids_look_like_uuid_hex() -> None:
    made = [tokens.request_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in made)
