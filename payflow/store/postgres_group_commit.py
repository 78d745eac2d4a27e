"""Group commit for PostgreSQL: every decision and transition queued while a batch is in flight goes into the
next one: one read and one write statement (postgres_writes), one commit, each item failing alone.

Each round trip and each commit costs both processes CPU on a small machine (about 0.15 ms in payflow and 0.2 ms
in PostgreSQL for a lone CAS statement; BENCHMARKS.md, notify_throughput_pg), so the writer takes what is queued,
reads the decisions' payments and dedupe rows in one statement, decides each, and writes all the steps in one
statement. A lost compare-and-set is that item's (a decision is decided again from a fresh read, a transition
raises `StaleState`); a batch statement that fails as a whole (a constraint, a deadlock, a notification recorded
meanwhile) is rolled back by PostgreSQL and its items are written again one statement each. A caller is answered
only after the statement holding its write returned, i.e. committed (synchronous_commit as the server has it).
One batch is in flight at a time, on one connection of the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import asyncpg

from payflow import errors, logs, models
from payflow.store import DECIDE_RETRIES, Decide, Decided, Step, transition_changes
from payflow.store.batching import BatchLoop
from payflow.store.postgres_writes import Outcome, Write, read_many, store_error, write_many, write_one

log = logs.get_logger(__name__)

MAX_BATCH = 128


@dataclasses.dataclass(slots=True)
class _Decision:
    out_trade_no: str
    decide: Decide
    at: dt.datetime
    notification: models.Notification | None
    future: asyncio.Future[Decided]
    tries: int = 0

    def keys(self) -> tuple[str, ...]:
        note = self.notification
        return (self.out_trade_no,) if note is None else (self.out_trade_no, "\0" + note.notification_id)


@dataclasses.dataclass(slots=True)
class _Transition:
    write: Write
    future: asyncio.Future[models.Payment]

    def keys(self) -> tuple[str, ...]:
        note, no = self.write.notification, self.write.out_trade_no or ""
        return (no,) if note is None else (no, "\0" + note.notification_id)


@dataclasses.dataclass(slots=True)
class Stats:
    batches: int = 0
    writes: int = 0
    largest_batch: int = 0
    fallbacks: int = 0  # batch statements that failed as a whole and were written item by item


class GroupWriter(BatchLoop["_Decision | _Transition"]):
    """Decisions and transitions of one store, applied in batches by one task, one batch at a time."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH) -> None:
        super().__init__("postgres-group-commit", max_batch=max_batch)
        self._pool = pool
        self.stats = Stats()

    def decide(self, out_trade_no: str, decide: Decide, *, at: dt.datetime,
               notification: models.Notification | None) -> asyncio.Future[Decided]:
        """`PaymentStore.decide`, resolved once the batch holding its write returned (committed)."""
        future: asyncio.Future[Decided] = self._loop().create_future()
        self._enqueue(_Decision(out_trade_no, decide, at, notification, future))
        return future

    def transition(self, write: Write) -> asyncio.Future[models.Payment]:
        """A transition's write; the future raises `StaleState` when its CAS lost."""
        future: asyncio.Future[models.Payment] = self._loop().create_future()
        self._enqueue(_Transition(write, future))
        return future

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        await self._finish()

    def _take(self) -> list[_Decision | _Transition]:
        """The next batch: what is queued, in order, but at most one item per payment and per notification id
        (a later one waits for the next batch and then sees what the earlier one wrote)."""
        pending = self._pending
        batch: list[_Decision | _Transition] = []
        later: list[_Decision | _Transition] = []
        taken: set[str] = set()
        while pending and len(batch) < self._max_batch:
            item = pending.popleft()
            if item.future.done():
                continue  # its caller is gone (cancelled): apply nothing
            keys = item.keys()
            if taken.intersection(keys):
                later.append(item)
                continue
            taken.update(keys)
            batch.append(item)
        pending.extendleft(reversed(later))
        return batch

    async def _apply(self, batch: list[_Decision | _Transition]) -> None:
        decisions = [item for item in batch if isinstance(item, _Decision)]
        # (write, whose it is, the decision's step, the payment it was decided on)
        writes: list[tuple[Write, _Decision | _Transition, Step | None, models.Payment | None]] = [
            (item.write, item, None, None) for item in batch if isinstance(item, _Transition)]
        try:
            async with self._pool.acquire() as db:
                if decisions:
                    for decision, (payment, seen) in zip(decisions, await _read(db, decisions), strict=True):
                        _decided(decision, payment, seen, writes)
                live = [entry for entry in writes if not entry[1].future.done()]
                live.sort(key=lambda entry: entry[0].out_trade_no or "")  # rows locked in one order by every replica
                outcomes = await self._write(db, [entry[0] for entry in live]) if live else []
        except Exception as exc:  # noqa: BLE001 — the connection failed: every caller of this batch is told
            failure = store_error(exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
            log.warning("store.batch_failed", writes=len(batch), error=str(failure))
            return
        self.stats.batches += 1
        self.stats.writes += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        for (write, owner, step, before), outcome in zip(live, outcomes, strict=True):
            if owner.future.done():
                continue
            if isinstance(outcome, Exception):
                owner.future.set_exception(outcome)
            elif isinstance(owner, _Transition):
                if outcome.moved is None:
                    payment = write.payment
                    assert payment is not None
                    owner.future.set_exception(errors.StaleState(
                        f"payment {payment.out_trade_no} is no longer {payment.state.value} v{payment.version}"))
                else:
                    owner.future.set_result(outcome.moved)
            elif outcome.recorded:
                owner.future.set_result(Decided(None, None, None))  # a concurrent delivery recorded it first
            elif write.to is None:
                owner.future.set_result(Decided(step, before, before))
            elif outcome.moved is not None:
                owner.future.set_result(Decided(step, before, outcome.moved))
            else:
                # The CAS lost: someone moved the payment meanwhile; decide again from what they left.
                owner.tries += 1
                if owner.tries >= DECIDE_RETRIES:
                    owner.future.set_exception(
                        errors.StoreUnavailable(f"payment {owner.out_trade_no} kept changing; try again"))
                else:
                    self._pending.appendleft(owner)

    async def _write(self, db: asyncpg.Connection, writes: list[Write]) -> list[Outcome | Exception]:
        if len(writes) > 1:
            try:
                outcomes: list[Outcome | Exception] = list(await write_many(db, writes))
            except asyncpg.PostgresError as exc:
                # The server refused the statement as a whole and kept none of it: one statement per item, so
                # whatever failed fails alone.
                self.stats.fallbacks += 1
                log.info("store.batch_split", writes=len(writes), error=type(exc).__name__)
            else:
                return outcomes
        results: list[Outcome | Exception] = []
        for write in writes:
            try:
                results.append(await write_one(db, write))
            except asyncpg.PostgresError as exc:
                results.append(store_error(exc))
        return results


async def _read(db: asyncpg.Connection, decisions: list[_Decision]) -> list[tuple[models.Payment | None, bool]]:
    return await read_many(db, [(d.out_trade_no, d.notification.notification_id if d.notification is not None else None)
                                for d in decisions])


def _decided(decision: _Decision, payment: models.Payment | None, seen: bool,
             writes: list[tuple[Write, _Decision | _Transition, Step | None, models.Payment | None]]) -> None:
    """Decide on the payment as read: resolve the decision now, or add its write."""
    future = decision.future
    if future.done():
        return
    if seen:
        future.set_result(Decided(None, None, None))  # recorded before: nothing decided, nothing written
        return
    note = decision.notification
    try:
        step = decision.decide(payment)
        if step.to is None or step.trigger is None or payment is None:
            if note is None:
                future.set_result(Decided(step, payment, payment))
                return
            write = Write(payment, None, None, {}, "", decision.at, None, None, note, step.outcome, False)
        else:
            values = transition_changes(payment, step.to, step.trigger, step.changes)
            write = Write(payment, step.to, step.trigger, values, step.source, decision.at, step.detail,
                          step.lease_token, note, step.outcome, True)
    except Exception as exc:  # noqa: BLE001 — e.g. GuardRejected: this decision's caller's alone
        future.set_exception(exc)
        return
    writes.append((write, decision, step, payment))
