"""Prometheus metrics: counters updated where things happen, gauges read from the store at scrape time.

One `Metrics` (and registry) per app, so tests and several apps in one process never share counters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from payflow.states import State
from payflow.states.refunds import RefundState
from payflow.store import PaymentStore

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The store's gauges are read at most this often, whoever scrapes: a scrape costs no query in between.
GAUGES_MAX_AGE = 5.0
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, gauges_max_age: float = GAUGES_MAX_AGE) -> None:
        self.registry = registry or CollectorRegistry()
        self._gauges_max_age = gauges_max_age
        self._gauges_read_at: dt.datetime | None = None  # by the service's clock
        self._reading: asyncio.Task[None] | None = None  # the store read in flight, shared by every scrape
        r = self.registry
        self.payments = Gauge("payflow_payments", "Payments by state.", ["state"], registry=r)
        self.needs_review = Gauge("payflow_needs_review", "Payments parked for a person.", registry=r)
        self.transitions = HotCounter("payflow_transitions", "State transitions by trigger and source.",
                                      ("trigger", "source"), registry=r)
        self.notifications = HotCounter("payflow_notifications", "WeChat notifications by outcome.", ("outcome",),
                                        registry=r)
        self.forwards = Counter("payflow_forwards", "Paid-event deliveries to the backend by outcome.", ["outcome"],
                                registry=r)
        self.wechat_seconds = Histogram("payflow_wechat_request_seconds", "WeChat Pay API latency.",
                                        ["endpoint", "outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        # Which WeChat domain answered (`primary`, `backup`; `other` for a bill download URL elsewhere), and which
        # could not be reached: answers on `backup` mean payflow is failing over (payflow/wechat/failover.py).
        self.wechat_domains = Counter("payflow_wechat_domain_requests", "WeChat Pay API requests by domain and "
                                      "whether it answered.", ["domain", "outcome"], registry=r)
        self.sweep_seconds = Histogram("payflow_sweep_pass_seconds", "Duration of one sweeper pass.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.due_backlog = Gauge("payflow_sweep_due_backlog", "Payments due for the sweeper now.", registry=r)
        self.oldest_due = Gauge("payflow_sweep_oldest_due_age_seconds",
                                "How long the oldest due payment has been waiting (0 when none).", registry=r)
        self.refunds = Gauge("payflow_refunds", "Refunds by state.", ["state"], registry=r)
        self.refunds_total = FamilyCounter("payflow_refunds", "Refunds created, and each state a refund reached.",
                                           ("outcome",), registry=r)
        # Every event but payment.paid (which payflow_forwards counts), by type and delivery outcome.
        self.events = Counter("payflow_backend_events", "Deliveries of payment.closed, refund.succeeded and "
                              "refund.failed to the backend, by type and outcome.", ["type", "outcome"], registry=r)
        self.discrepancies = Counter("payflow_reconciliation_discrepancies",
                                     "Reconciliation discrepancies found, by category.", ["category"], registry=r)

    async def refresh(self, store: PaymentStore, now: dt.datetime) -> None:
        """Bring the store's gauges up to date: at most one read per `gauges_max_age`, and scrapes that
        arrive while it runs share it. (Each costs an index scan: anonymous scrapers must not be able to
        keep the store busy.)"""
        read_at = self._gauges_read_at
        if read_at is not None and 0 <= (now - read_at).total_seconds() < self._gauges_max_age:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read_gauges(store, now),
                                                                   name="metrics-gauges")
        await asyncio.shield(self._reading)

    async def _read_gauges(self, store: PaymentStore, now: dt.datetime) -> None:
        """Read the gauges that belong to the store (several replicas share it, so each reports all)."""
        counts = await store.count_by_state()
        for state in State:
            self.payments.labels(state=state.value).set(counts.get(state, 0))
        self.needs_review.set(counts.get(State.NEEDS_REVIEW, 0))
        refunds = await store.count_refunds_by_state()
        for refund_state in RefundState:
            self.refunds.labels(state=refund_state.value).set(refunds.get(refund_state, 0))
        due, oldest = await store.due_stats(now)
        self.due_backlog.set(due)
        self.oldest_due.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
        self._gauges_read_at = now

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_transition(self, trigger: str, source: str) -> None:
        self.transitions.inc(trigger, source)

    def count_notification(self, outcome: str) -> None:
        self.notifications.inc(outcome)


class HotCounter:
    """A labelled Prometheus counter for the notify path: a dict of plain ints, turned into samples only
    when scraped. prometheus_client's own Counter takes a lock and makes four Python calls per increment,
    and these two move on every notification. Bumped from the event loop's thread only."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], *,
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def inc(self, *labels: str) -> None:
        """Add one to the series with these label values, in `labelnames` order."""
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


class FamilyCounter(HotCounter):
    """A counter that shares its family name with a gauge (`payflow_refunds` by state, `payflow_refunds_total` by
    outcome): the exposition tells them apart by the `_total` suffix, but the registry's clash check, which
    compares family names, would refuse the second. So this one describes nothing."""

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

    def labels(self, *, outcome: str) -> _Bump:
        return _Bump(self, (outcome,))


class _Bump:
    __slots__ = ("_counter", "_labels")

    def __init__(self, counter: HotCounter, labels: tuple[str, ...]) -> None:
        self._counter, self._labels = counter, labels

    def inc(self) -> None:
        self._counter.inc(*self._labels)
