"""Delivery of signed events to the business backend (DESIGN §6.3): `payment.paid`, `payment.closed`,
`refund.succeeded` and `refund.failed`, told apart by their `type`.

The backend must be idempotent by `Idempotency-Key`; payflow delivers at least once, with one event_id per
event for every retry. Backend implementers verify events with `verify_signature` (re-exported).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

import aiohttp

from payflow import logs, models
from payflow.signing import InvalidSignature, sign_headers, verify_signature
from payflow.states.refunds import RefundState

__all__ = ["EVENT_TYPES", "Backend", "BackendClient", "Delivery", "InvalidSignature", "closed_event_body",
           "derived_event_id", "event_body", "refund_event_body", "verify_signature"]

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


PAYMENT_PAID, PAYMENT_CLOSED = "payment.paid", "payment.closed"
REFUND_SUCCEEDED, REFUND_FAILED = "refund.succeeded", "refund.failed"
EVENT_TYPES = (PAYMENT_PAID, PAYMENT_CLOSED, REFUND_SUCCEEDED, REFUND_FAILED)
# The namespace of event ids derived from another event's id (uuid5): the same input, the same id, on every
# retry and in every process.
_DERIVED = uuid.UUID("7c1f3a52-5b0e-4f43-9a43-6f1d7f3e2a10")


def derived_event_id(event_id: str, event_type: str) -> str:
    """The id of the `event_type` event of the record whose own event id is `event_id` (a payment's closed
    event, a refund's failed event): stable, so every retry carries the same Idempotency-Key."""
    return uuid.uuid5(_DERIVED, f"{event_type}:{event_id}").hex


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def event_body(payment: models.Payment) -> bytes:
    """The paid event, serialised once per attempt; the same facts every time for one payment."""
    return json.dumps({
        "type": PAYMENT_PAID,
        "event_id": payment.event_id,
        "out_trade_no": payment.out_trade_no,
        "order_id": payment.order_id,
        "transaction_id": payment.transaction_id,
        "amount": payment.paid_amount if payment.paid_amount is not None else payment.amount,
        "currency": payment.currency,
        "paid_at": payment.paid_at.isoformat() if payment.paid_at else None,
        "attach": payment.attach,
    }, ensure_ascii=False, separators=(",", ":")).encode()


def closed_event_body(payment: models.Payment, closed_at: dt.datetime, reason: str | None) -> bytes:
    """`payment.closed`: an unpaid payment was closed (at WeChat, or never placed there); the backend may release
    the order."""
    return _encode({
        "type": PAYMENT_CLOSED,
        "event_id": derived_event_id(payment.event_id, PAYMENT_CLOSED),
        "out_trade_no": payment.out_trade_no,
        "order_id": payment.order_id,
        "amount": payment.amount,
        "currency": payment.currency,
        "closed_at": closed_at.isoformat(),
        "reason": reason,
        "attach": payment.attach,
    })


def refund_event_body(payment: models.Payment, refund: models.Refund) -> tuple[str, bytes]:
    """`refund.succeeded` (a succeeded or synced refund) or `refund.failed` (closed or refused): its id and bytes."""
    succeeded = refund.state in (RefundState.SUCCEEDED, RefundState.SYNCED)
    event_type = REFUND_SUCCEEDED if succeeded else REFUND_FAILED
    event_id = refund.event_id if succeeded else derived_event_id(refund.event_id, REFUND_FAILED)
    body: dict[str, Any] = {
        "type": event_type,
        "event_id": event_id,
        "out_refund_no": refund.out_refund_no,
        "out_trade_no": payment.out_trade_no,
        "order_id": payment.order_id,
        "refund_id": refund.refund_id,
        "amount": refund.amount,
        "currency": payment.currency,
        "origin": refund.origin,
        "reason": refund.reason,
        "cause": refund.cause,
        "attach": payment.attach,
    }
    if succeeded:
        body["succeeded_at"] = refund.succeeded_at.isoformat() if refund.succeeded_at else None
    else:
        body["state"] = refund.state.value
        body["failure"] = refund.failure
    return event_id, _encode(body)


class Backend(Protocol):
    """Where events go; `BackendClient` is the real one."""

    async def deliver(self, payment: models.Payment) -> Delivery:
        """One attempt of the paid event; never raises for the backend's own failures (a `retry` Delivery)."""
        ...

    async def send(self, event_id: str, body: bytes) -> Delivery:
        """One attempt of any event (its id and exact bytes), answered as `deliver` is."""
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
        return await self.send(payment.event_id, event_body(payment))

    async def send(self, event_id: str, body: bytes) -> Delivery:
        headers = sign_headers(self._secret, body, event_id, now=self._now())
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
