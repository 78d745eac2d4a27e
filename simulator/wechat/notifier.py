"""Notifications (WECHATPAY_V3.md §6): encrypted, signed TRANSACTION.SUCCESS posts to the order's notify_url
and REFUND.SUCCESS / ABNORMAL / CLOSED posts for refunds, retried on WeChat's schedule, with the fault plan's
drops, duplicates and probes.

`deliver_due(now)` sends whatever is due and returns (burst mode: tests drive it with a FakeClock);
`run(clock, stop)` is the app's background loop around the same queue.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import itertools
import json
import secrets
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import aiohttp

from payflow import logs
from payflow.clock import Clock
from payflow.devkeys import KeySet
from payflow.wechat import crypto
from simulator.wechat.faults import FaultDice, QueueFaults, SendFaults
from simulator.wechat.ledger import Order, Refund, RefundStatus, rfc3339
from simulator.wechat.signing import Signer, SigningKey

log = logs.get_logger(__name__)

# 15 retries after the first send, 24h4m in all (§6.5).
RETRY_SCHEDULE: tuple[float, ...] = (
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
)
ACK_TIMEOUT = 5.0
ACK_STATUSES = frozenset({200, 204})
IDLE_POLL = 1.0
_NAMESPACE = uuid.UUID("6f1c7f3e-2b7c-4a55-9d0e-3c1f5a8e2b10")
REFUND_SUMMARIES = {
    RefundStatus.SUCCESS: "退款成功", RefundStatus.ABNORMAL: "退款异常", RefundStatus.CLOSED: "退款关闭",
}


class Clockwork(Protocol):
    """Something else that moves on the simulator's clock and may queue notifications (refunds completing):
    advanced before every delivery pass, and its `next_due` wakes the background loop."""

    def advance(self, now: dt.datetime) -> object: ...

    def next_due(self) -> dt.datetime | None: ...


@dataclasses.dataclass
class NotificationStats:
    sent: int = 0  # POSTs of the real notification, duplicates included
    dropped: int = 0  # attempts the fault plan swallowed
    acked: int = 0  # attempts answered 200/204 in time
    failed: int = 0  # attempts answered otherwise, or not in time
    duplicates: int = 0
    probes: int = 0
    probes_acked: int = 0  # a receiver that acks a SIGNTEST probe does not verify signatures
    forged_acked: int = 0  # ...nor one that acks a corrupted signature

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class Notification:
    id: str
    out_trade_no: str
    url: str
    body: bytes
    seq: int
    due: dt.datetime | None
    never_deliver: bool = False
    held: bool = False
    out_refund_no: str | None = None  # set on refund notifications
    event_type: str = "TRANSACTION.SUCCESS"
    attempts: int = 0
    state: Literal["pending", "acked", "exhausted"] = "pending"
    in_flight: bool = False
    stats: NotificationStats = dataclasses.field(default_factory=NotificationStats)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "attempts": self.attempts,
                "next_attempt_at": None if self.due is None else rfc3339(self.due), **self.stats.to_json()}


class Notifier:
    """One notification per paid order and one per refund outcome, each with a stable id; sends happen in
    tracked tasks."""

    def __init__(
        self,
        keys: KeySet,
        session: aiohttp.ClientSession,
        dice: FaultDice,
        *,
        time_factor: float = 1.0,
        ack_timeout: float = ACK_TIMEOUT,
        schedule: Sequence[float] = RETRY_SCHEDULE,
        signer: Signer | None = None,
    ) -> None:
        """`signer` picks each attempt's key by the merchant's key mode (default: always the public key)."""
        if time_factor <= 0:
            raise ValueError("time_factor must be positive")
        self._keys = keys
        self._signer = signer
        self._session = session
        self._dice = dice
        self._time_factor = time_factor
        self._ack_timeout = ack_timeout
        self._schedule = tuple(schedule)
        self._by_order: dict[str, Notification] = {}
        self._by_refund: dict[tuple[str, str], Notification] = {}  # (out_refund_no, refund status)
        self._seq = itertools.count()
        self._clockworks: list[Clockwork] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()

    @property
    def ack_timeout(self) -> float:
        return self._ack_timeout

    # -- queue ----------------------------------------------------------------------------------

    def enqueue(self, order: Order, now: dt.datetime) -> Notification:
        """Queue the TRANSACTION.SUCCESS notification of a just-paid order (once per order)."""
        existing = self._by_order.get(order.out_trade_no)
        if existing is not None:
            return existing
        if order.notify_url is None or order.transaction_id is None:
            raise ValueError(f"order {order.out_trade_no} has nothing to notify")
        faults = self._dice.queued()
        # Derived from the transaction, so the id is stable across retries and across runs.
        notification_id = str(uuid.uuid5(_NAMESPACE, f"{order.mchid}:{order.transaction_id}"))
        body = self._envelope(notification_id, "TRANSACTION.SUCCESS", "支付成功", "transaction",
                              order.transaction(), now)
        notification = self._new(notification_id, order.out_trade_no, order.notify_url, body, faults, now)
        self._by_order[order.out_trade_no] = notification
        log.info("notification.queued", out_trade_no=order.out_trade_no, notification_id=notification.id)
        self._wakeup.set()
        return notification

    def enqueue_refund(self, refund: Refund, resource: Mapping[str, Any], url: str,
                       now: dt.datetime) -> Notification:
        """Queue the REFUND.<status> notification of a refund that just reached `refund.status` (once per
        refund and status); `resource` is the plaintext WeChat encrypts (refunds.py builds it)."""
        key = (refund.out_refund_no, str(refund.status))
        existing = self._by_refund.get(key)
        if existing is not None:
            return existing
        summary = REFUND_SUMMARIES.get(refund.status)
        if summary is None:
            raise ValueError(f"refund {refund.out_refund_no} is {refund.status}: nothing to notify")
        faults = self._dice.queued()
        notification_id = str(uuid.uuid5(_NAMESPACE, f"{self._keys.mchid}:{refund.refund_id}:{refund.status}"))
        body = self._envelope(notification_id, f"REFUND.{refund.status}", summary, "refund", resource, now)
        notification = self._new(notification_id, refund.out_trade_no, url, body, faults, now)
        notification.out_refund_no, notification.event_type = refund.out_refund_no, f"REFUND.{refund.status}"
        self._by_refund[key] = notification
        log.info("notification.queued", out_trade_no=refund.out_trade_no, out_refund_no=refund.out_refund_no,
                 refund_status=str(refund.status), notification_id=notification.id)
        self._wakeup.set()
        return notification

    def _new(self, notification_id: str, out_trade_no: str, url: str, body: bytes, faults: QueueFaults,
             now: dt.datetime) -> Notification:
        notification = Notification(
            id=notification_id,
            out_trade_no=out_trade_no,
            url=url,
            body=body,
            seq=next(self._seq),
            due=now + self._seconds(faults.delay),
            never_deliver=faults.never_deliver,
            held=faults.reorder,
        )
        if notification.held:
            # Held until the next notification has gone out; the first retry slot is the backstop.
            notification.due = now + self._seconds(self._schedule[0] + faults.delay)
        return notification

    def get(self, out_trade_no: str) -> Notification | None:
        return self._by_order.get(out_trade_no)

    def refund_notifications(self, out_refund_no: str) -> list[Notification]:
        """A refund's notifications in the order they were queued (ABNORMAL may be followed by CLOSED)."""
        return [n for (no, _), n in self._by_refund.items() if no == out_refund_no]

    def notifications(self) -> list[Notification]:
        return list(self._all())

    def attach(self, clockwork: Clockwork) -> None:
        self._clockworks.append(clockwork)
        self._wakeup.set()

    def wake(self) -> None:
        """Make the background loop look again at what is due (e.g. a refund was just accepted)."""
        self._wakeup.set()

    def next_due(self) -> dt.datetime | None:
        pending = [n.due for n in self._all() if n.due is not None and not n.in_flight]
        pending.extend(due for c in self._clockworks if (due := c.next_due()) is not None)
        return min(pending, default=None)

    def _all(self) -> Iterator[Notification]:
        return itertools.chain(self._by_order.values(), self._by_refund.values())

    # -- delivery -------------------------------------------------------------------------------

    async def deliver_due(self, now: dt.datetime) -> int:
        """Make every attempt due at `now` (and any it releases), wait for them; returns attempts made."""
        made = 0
        while True:
            started = self._start_due(now)
            if not started:
                return made
            made += len(started)
            tasks = [task for task in started if task is not None]
            if tasks:
                await asyncio.gather(*tasks)

    async def run(self, clock: Clock, stop: asyncio.Event) -> None:
        """Background delivery until `stop` is set; sends run in tracked tasks of their own."""
        while not stop.is_set():
            self._wakeup.clear()
            now = clock.now()
            self._start_due(now)
            upcoming = self.next_due()
            wait = IDLE_POLL if upcoming is None else min(IDLE_POLL, (upcoming - now).total_seconds())
            if wait > 0:
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())}
                try:
                    await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                    await asyncio.gather(*waiters, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the sends in flight and wait for them to unwind."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_due(self, now: dt.datetime) -> list[asyncio.Task[None] | None]:
        for clockwork in self._clockworks:
            clockwork.advance(now)  # first: what it makes due (a refund completing) may queue a notification
        due = [n for n in self._all() if n.due is not None and n.due <= now and not n.in_flight]
        # Decisions are rolled here, synchronously and in a fixed order, so a seed replays exactly.
        due.sort(key=lambda n: (n.due, n.seq))
        return [self._start(n, now) for n in due]

    def _start(self, n: Notification, now: dt.datetime) -> asyncio.Task[None] | None:
        first = n.attempts == 0
        faults = self._dice.send(first=first)
        key = self._signing_key(now)  # rolled here too, in the same fixed order, by the signer's own stream
        n.held = False
        n.attempts += 1
        index = n.attempts - 1
        retry_at = None
        if index < len(self._schedule):
            retry_at = now + self._seconds(self._schedule[index] + faults.next_delay)
        if n.never_deliver or faults.dropped:
            n.stats.dropped += 1
            log.info("notification.dropped", out_trade_no=n.out_trade_no, attempt=n.attempts)
            self._finish(n, acked=False, retry_at=retry_at, first=first, now=now)
            return None
        n.in_flight = True
        n.due = None
        task = asyncio.create_task(self._send(n, faults, key, now, retry_at, first),
                                   name=f"notify:{n.out_trade_no}:{n.attempts}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(
        self, n: Notification, faults: SendFaults, key: SigningKey, now: dt.datetime, retry_at: dt.datetime | None,
        first: bool,
    ) -> None:
        acked = False
        try:
            if faults.probe:
                n.stats.probes += 1
                if await self._post(n, self._headers(n, key, now, probe=True)):
                    n.stats.probes_acked += 1
            headers = self._headers(n, key, now, corrupt=faults.corrupt)
            copies = 2 if faults.duplicate else 1
            n.stats.sent += copies
            n.stats.duplicates += copies - 1
            # Duplicates go out together, as from two WeChat servers at once.
            results = await asyncio.gather(*(self._post(n, headers) for _ in range(copies)))
            acked = any(results)
            if acked and faults.corrupt:
                n.stats.forged_acked += 1
        finally:
            # Runs on cancellation too, so a send cut short at shutdown is simply retried later.
            n.in_flight = False
            if acked:
                n.stats.acked += 1
            else:
                n.stats.failed += 1
            self._finish(n, acked=acked, retry_at=retry_at, first=first, now=now)

    def _finish(self, n: Notification, *, acked: bool, retry_at: dt.datetime | None, first: bool,
                now: dt.datetime) -> None:
        if acked:
            n.state, n.due = "acked", None
            log.info("notification.acked", out_trade_no=n.out_trade_no, attempt=n.attempts)
        elif retry_at is None:
            n.state, n.due = "exhausted", None
            log.warning("notification.exhausted", out_trade_no=n.out_trade_no, attempts=n.attempts)
        else:
            n.due = retry_at
        if first:
            for other in self._all():
                if other.held and other is not n:
                    other.held, other.due = False, now
        self._wakeup.set()

    async def _post(self, n: Notification, headers: dict[str, str]) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=self._ack_timeout)
            async with self._session.post(n.url, data=n.body, headers=headers, timeout=timeout) as response:
                await response.read()
                ok = response.status in ACK_STATUSES
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("notification.failed", out_trade_no=n.out_trade_no, error=type(exc).__name__)
            return False
        log.info("notification.sent", out_trade_no=n.out_trade_no, status=response.status,
                 probe=headers["Wechatpay-Signature"].startswith(crypto.PROBE_PREFIX))
        return ok

    # -- message --------------------------------------------------------------------------------

    def _envelope(self, notification_id: str, event_type: str, summary: str, original_type: str,
                  resource: Mapping[str, Any], now: dt.datetime) -> bytes:
        # associated_data is the original_type in real captures: "transaction", "refund" (§6.1).
        nonce = crypto.nonce_str(crypto.AEAD_NONCE_BYTES)
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        envelope = {
            "id": notification_id,
            "create_time": rfc3339(now),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": original_type,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": crypto.aead_encrypt(self._keys.apiv3_key, nonce, original_type, plaintext),
                "associated_data": original_type,
                "nonce": nonce,
            },
        }
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()

    def _signing_key(self, now: dt.datetime) -> SigningKey:
        if self._signer is None:
            return SigningKey(self._keys.pub_key_id, self._keys.platform_private_key)
        return self._signer.for_notification(now)

    def _headers(self, n: Notification, key: SigningKey, now: dt.datetime, *, probe: bool = False,
                 corrupt: bool = False) -> dict[str, str]:
        # Re-signed per attempt: a retry hours later must still pass the receiver's 5-minute window.
        headers = crypto.sign_response_headers(key.private_key, key.serial, n.body, timestamp=int(now.timestamp()))
        if probe:
            # 19 + 342 characters: deliberately not valid Base64, like the real probes (§2.5).
            filler = base64.b64encode(secrets.token_bytes(256)).decode().rstrip("=")
            headers["Wechatpay-Signature"] = crypto.PROBE_PREFIX + filler
        elif corrupt:
            raw = bytearray(base64.b64decode(headers["Wechatpay-Signature"]))
            raw[0] ^= 0xFF
            headers["Wechatpay-Signature"] = base64.b64encode(bytes(raw)).decode()
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = "Mozilla/4.0"
        return headers

    def _seconds(self, seconds: float) -> dt.timedelta:
        return dt.timedelta(seconds=seconds / self._time_factor)
