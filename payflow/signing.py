"""HMAC signatures of the paid events payflow sends to the business backend (DESIGN §6.3).

Backend implementers: verify with `verify_signature(secret, request.headers, raw_body)` before trusting
an event, and treat `Idempotency-Key` (the event_id) as the key of an idempotent "mark paid".

Rolling the secret takes two steps and no downtime: the backend verifies with `[new, old]`, then payflow
signs with the new one (`PAYFLOW_BACKEND_SECRET=new,old`, then `new`), then the backend drops the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence

TIMESTAMP_HEADER = "Payflow-Timestamp"
SIGNATURE_HEADER = "Payflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"
# Seconds since 1970 have 10 digits until 2286; far more could not be compared with a float clock.
_MAX_TIMESTAMP_DIGITS = 15


class InvalidSignature(Exception):
    """The event's signature is missing, malformed, stale or wrong."""


def signature(secret: str | bytes, timestamp: int | str, raw_body: bytes) -> str:
    return _mac(secret.encode() if isinstance(secret, str) else secret, str(timestamp), raw_body)


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
    secret: str | bytes | Sequence[str | bytes],
    headers: Mapping[str, str],
    raw_body: bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> None:
    """Raise `InvalidSignature` unless the body was signed with `secret` within `tolerance` seconds.

    `secret` may be a list (or tuple) of secrets, any of which may have signed: a backend rolling its secret
    accepts the old and the new one for as long as payflow may still sign with the old. Several `v1=` values
    separated by commas are accepted too. Whatever the arguments hold (headers absent, not text, non-ASCII,
    lone surrogates; secrets of the wrong type or none at all), nothing but `InvalidSignature` is raised.
    """
    lookup = _text_headers(headers)
    timestamp = lookup.get(TIMESTAMP_HEADER.lower(), "")
    presented = lookup.get(SIGNATURE_HEADER.lower(), "")
    # str.isdigit() also accepts "²" (which int() refuses) and "١" (which int() reads); the signer sends ASCII.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS) or not presented:
        raise InvalidSignature("missing or malformed Payflow-Timestamp / Payflow-Signature")
    if not isinstance(raw_body, bytes | bytearray | memoryview):
        raise InvalidSignature(f"raw_body must be the request's raw bytes, not {type(raw_body).__name__}")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        raise InvalidSignature(f"timestamp {timestamp} is more than {tolerance}s away from now")
    expected = [_mac(key, timestamp, bytes(raw_body)).encode() for key in _keys(secret)]
    # Compared as bytes: compare_digest refuses str with non-ASCII characters; surrogatepass encodes any str.
    candidates = [part.strip().encode("utf-8", "surrogatepass") for part in presented.split(",")]
    if not any(hmac.compare_digest(mac, c) for mac in expected for c in candidates):
        raise InvalidSignature("signature does not match")


def _text_headers(headers: object) -> dict[str, str]:
    """The headers whose name and value are text, by lower-cased name; nothing when `headers` is no mapping."""
    items = getattr(headers, "items", None)
    if not callable(items):
        return {}
    pairs: Iterable[object] = items()
    found: dict[str, str] = {}
    for pair in pairs:
        if isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str):
            found[pair[0].lower()] = pair[1]
    return found


def _keys(secret: object) -> list[bytes]:
    """One secret, or each of a sequence (list, tuple) of them; at least one."""
    if isinstance(secret, Sequence) and not isinstance(secret, str | bytes | bytearray):
        try:
            secrets = list(secret)
        except Exception:  # a Sequence of the caller's own that cannot be read: no secret, not a crash
            raise InvalidSignature("the secrets cannot be read") from None
        keys = [_key(each) for each in secrets]
        if not keys:
            raise InvalidSignature("no secret to verify with (an empty list)")
        return keys
    return [_key(secret)]


def _key(secret: object) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if isinstance(secret, str):
        try:
            return secret.encode()
        except UnicodeEncodeError:
            raise InvalidSignature("the secret is not valid text (lone surrogates)") from None
    raise InvalidSignature(f"the secret must be str or bytes, not {type(secret).__name__}")


def _mac(key: bytes, timestamp: str, raw_body: bytes) -> str:
    mac = hmac.new(key, timestamp.encode() + b"." + raw_body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"
