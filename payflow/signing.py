"""HMAC signatures of the paid events payflow sends to the business backend (DESIGN §6.3).

Backend implementers: verify with `verify_signature(secret, request.headers, raw_body)` before trusting
an event, and treat `Idempotency-Key` (the event_id) as the key of an idempotent "mark paid".
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "Payflow-Timestamp"
SIGNATURE_HEADER = "Payflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"


class InvalidSignature(Exception):
    """The event's signature is missing, malformed, stale or wrong."""


def signature(secret: str | bytes, timestamp: int | str, raw_body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode() + b"." + raw_body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def sign_headers(secret: str | bytes, raw_body: bytes, event_id: str, *, now: float | None = None) -> dict[str, str]:
    """The headers of one delivery attempt; the timestamp is fresh each attempt, the event_id is not."""
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, raw_body),
        IDEMPOTENCY_HEADER: event_id,
        "Content-Type": "application/json",
    }


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> None:
    """Raise `InvalidSignature` unless the body was signed with `secret` within `tolerance` seconds.

    Several `v1=` values separated by commas are accepted (room for secret rotation).
    """
    lookup = {k.lower(): v for k, v in headers.items()}
    timestamp = lookup.get(TIMESTAMP_HEADER.lower(), "")
    presented = lookup.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit() or not presented:
        raise InvalidSignature("missing or malformed Payflow-Timestamp / Payflow-Signature")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        raise InvalidSignature(f"timestamp {timestamp} is more than {tolerance}s away from now")
    expected = signature(secret, timestamp, raw_body)
    candidates = [part.strip() for part in presented.split(",")]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match")
