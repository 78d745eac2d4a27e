"""Identifiers that must be unique but need not be unpredictable: request ids and lease tokens.

They come from a generator seeded once from the OS at import, rather than one `os.urandom` system call
each (two per notification otherwise). Anything a client or WeChat sees as a secret or an external
identifier (out_trade_no, nonces, event ids) keeps using `secrets`/`uuid`.
"""

from __future__ import annotations

import random

_GENERATOR = random.Random()  # seeded from os.urandom


def lease_token() -> str:
    """64 random bits as 16 hex digits; tells one holder of a lease from another."""
    return f"{_GENERATOR.getrandbits(64):016x}"


def request_id() -> str:
    """128 random bits as 32 hex digits, the shape of the uuid4 hex it replaces."""
    return f"{_GENERATOR.getrandbits(128):032x}"
