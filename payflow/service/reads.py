"""Reading payments: the payer's status poll (which asks WeChat while a payment is still `prepaid`), one
payment and its timeline, and the admin listing with its keyset cursor and the `stuck` selection."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import json

from payflow import errors, logs, models, ratelimit
from payflow.ratelimit import Priority
from payflow.service.core import Core
from payflow.service.paid import Paid
from payflow.states import Source, State
from payflow.wechat.api import WechatApi

log = logs.get_logger("payflow.service")

STUCK = "stuck"  # the listing's pseudo-state: payments past their first deadline
READ_QUERIES_KEPT = 10_000  # query-on-read entries kept; past it the least recently asked is forgotten


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    payments: list[models.Payment]
    next_cursor: str | None  # None on the last page


class Reads:
    def __init__(self, core: Core, wechat: WechatApi, paid: Paid, *, queries_kept: int = READ_QUERIES_KEPT) -> None:
        self.core = core
        self.wechat = wechat
        self.paid = paid
        # query-on-read: out_trade_no → (when asked, the shared query task), least recently asked first.
        # Bounded with O(1) upkeep: forgetting an entry whose query still runs only means the next poll of
        # that payment may ask again; the query itself finishes and applies what it learns.
        self._queries: collections.OrderedDict[str, tuple[dt.datetime, asyncio.Task[None]]] = (
            collections.OrderedDict())
        self._queries_kept = queries_kept

    @property
    def queries_tracked(self) -> int:
        """Query-on-read entries held now (at most `queries_kept`)."""
        return len(self._queries)

    async def get_payment(self, out_trade_no: str) -> models.Payment:
        return await self.core.load(out_trade_no)

    async def timeline(self, out_trade_no: str) -> list[models.Event]:
        await self.core.load(out_trade_no)
        return await self.core.store.events(out_trade_no)

    async def view_payment(self, out_trade_no: str) -> models.Payment:
        """The payment as a payer's status poll should see it: asks WeChat while it is still `prepaid`.

        At most one query per payment per `read_query_interval`; concurrent readers share it. A WeChat
        failure is not the reader's problem: they get the stored state.
        """
        core = self.core
        payment = await core.load(out_trade_no)
        interval = core.settings.read_query_interval
        if payment.state is not State.PREPAID or interval <= 0:
            return payment
        now = core.now()
        entry = self._queries.get(out_trade_no)
        fresh_enough = entry is not None and (now - entry[0]).total_seconds() < interval
        if entry is None or not fresh_enough and entry[1].done():
            task = asyncio.get_running_loop().create_task(self._query(out_trade_no, payment.appid),
                                                          name=f"read-query-{out_trade_no}")
            entry = self._queries[out_trade_no] = (now, task)
            self._queries.move_to_end(out_trade_no)
            if len(self._queries) > self._queries_kept:
                self._queries.popitem(last=False)
        await asyncio.shield(entry[1])
        return await core.load(out_trade_no)

    async def _query(self, out_trade_no: str, appid: str | None) -> None:
        try:
            with ratelimit.priority(Priority.READ):  # never waits: no budget now → the stored state
                txn = await self.wechat.query(out_trade_no, appid)
            if txn is not None and txn.trade_state == "SUCCESS":
                with logs.bound(out_trade_no=out_trade_no):
                    await self.paid.confirm_paid(txn, Source.QUERY)
        except errors.PayflowError as exc:
            log.info("payment.read_query_failed", out_trade_no=out_trade_no, error=str(exc))

    async def list_payments(self, *, state: str | None, limit: int, cursor: str | None) -> Listing:
        """One page of `GET /v1/admin/payments`: by out_trade_no (all, or one state), or `stuck` oldest
        first. `cursor` is the `next_cursor` of the previous page; anything else is `InvalidRequest`."""
        store = self.core.store
        if state == STUCK:
            after = None
            if cursor:
                at, no = _decode_cursor(cursor, 2)
                after = (_cursor_time(at), no)
            created_before, expired_before = self.stuck_thresholds()
            found = await store.list_stuck(created_before=created_before, expired_before=expired_before,
                                           after=after, limit=limit)
            last = found[-1] if len(found) == limit else None
            return Listing(found, _encode_cursor(last.created_at.isoformat(), last.out_trade_no) if last else None)
        after_no = _decode_cursor(cursor, 1)[0] if cursor else None
        found = await store.list_payments(state=State(state) if state else None, after=after_no, limit=limit)
        return Listing(found, _encode_cursor(found[-1].out_trade_no) if len(found) == limit else None)

    def stuck_thresholds(self) -> tuple[dt.datetime, dt.datetime]:
        """(created_before, expired_before) of the `stuck` listing: a `created` payment is stuck once its
        placement grace is over, a `prepaid` one once it expired without being closed."""
        now = self.core.now()
        return now - dt.timedelta(seconds=self.core.settings.placement_grace), now


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(parts, list) and len(parts) == size and all(isinstance(p, str) for p in parts):
            return parts
    except (ValueError, RecursionError):
        pass
    raise _bad_cursor()


def _cursor_time(value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
        moment.astimezone(dt.UTC)  # year 1 at +01:00 has no UTC instant
    except (ValueError, OverflowError):
        raise _bad_cursor() from None
    if moment.tzinfo is None:
        raise _bad_cursor()
    return moment


def _bad_cursor() -> errors.InvalidRequest:
    return errors.InvalidRequest("cursor is not one this API handed out", field="cursor")
