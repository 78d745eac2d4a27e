"""Delivery of the signed "paid" event to the business backend (DESIGN §6.3).

The backend must be idempotent by `Idempotency-Key`; payflow delivers at least once, with one event_id
per payment for every retry. Backend implementers verify events with `verify_signature` (re-exported).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import aiohttp

from payflow import logs, models
from payflow.signing import InvalidSignature, sign_headers, verify_signature

__all__ = ["Backend", "BackendClient", "Delivery", "InvalidSignature", "event_body", "verify_signature"]

log = logs.get_logger(__name__)

REJECTING_STATUSES = frozenset({409, 410, 422})
_KEPT_BODY = 2000  # characters of the backend's answer kept on the event

Outcome = Literal["acked", "rejected", "retry"]


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    status: int | None = None
    body: str | None = None
    error: str | None = None

    def detail(self) -> dict[str, Any]:
        return {k: v for k, v in (("status", self.status), ("body", self.body), ("error", self.error))
                if v is not None}


def event_body(payment: models.Payment) -> bytes:
    """The paid event, serialised once per attempt; the same facts every time for one payment."""
    return json.dumps({
        "event_id": payment.event_id,
        "out_trade_no": payment.out_trade_no,
        "order_id": payment.order_id,
        "transaction_id": payment.transaction_id,
        "amount": payment.paid_amount if payment.paid_amount is not None else payment.amount,
        "currency": payment.currency,
        "paid_at": payment.paid_at.isoformat() if payment.paid_at else None,
        "attach": payment.attach,
    }, ensure_ascii=False, separators=(",", ":")).encode()


class Backend(Protocol):
    """Where paid events go; `BackendClient` is the real one."""

    async def deliver(self, payment: models.Payment) -> Delivery:
        """One attempt; never raises for the backend's own failures (those are a `retry` Delivery)."""
        ...


class BackendClient:
    def __init__(self, url: str, secret: str, *, timeout: float = 10.0, session: aiohttp.ClientSession | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._now = now

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, payment: models.Payment) -> Delivery:
        body = event_body(payment)
        headers = sign_headers(self._secret, body, payment.event_id, now=self._now())
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(self.url, data=body, headers=headers, timeout=self._timeout,
                                          allow_redirects=False) as response:
                status = response.status
                text = await _kept_text(response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Delivery("retry", error=f"{type(exc).__name__}: {exc}"[:_KEPT_BODY])
        if 200 <= status < 300:
            return Delivery("acked", status=status)
        if status in REJECTING_STATUSES:
            return Delivery("rejected", status=status, body=text)
        return Delivery("retry", status=status, body=text)


async def _kept_text(response: aiohttp.ClientResponse) -> str:
    """The first `_KEPT_BODY` characters of the answer, reading no more bytes than those can take: a backend
    answering gigabytes (or never ending its answer) must not make payflow buffer them or wait for them."""
    limit = _KEPT_BODY * 4  # no charset spends more than four bytes on a character
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", errors="replace")
    return text[:_KEPT_BODY]
