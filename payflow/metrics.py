"""Prometheus metrics: counters updated where things happen, gauges read from the store at scrape time.

One `Metrics` (and registry) per app, so tests and several apps in one process never share counters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from payflow.states import State
from payflow.store import PaymentStore

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # labelled children already looked up, for the counters bumped on every notification
        self._children: dict[tuple[object, ...], Any] = {}
        r = self.registry
        self.payments = Gauge("payflow_payments", "Payments by state.", ["state"], registry=r)
        self.needs_review = Gauge("payflow_needs_review", "Payments parked for a person.", registry=r)
        self.transitions = Counter("payflow_transitions", "State transitions by trigger and source.",
                                   ["trigger", "source"], registry=r)
        self.notifications = Counter("payflow_notifications", "WeChat notifications by outcome.", ["outcome"],
                                     registry=r)
        self.forwards = Counter("payflow_forwards", "Paid-event deliveries to the backend by outcome.", ["outcome"],
                                registry=r)
        self.wechat_seconds = Histogram("payflow_wechat_request_seconds", "WeChat Pay API latency.",
                                        ["endpoint", "outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        self.sweep_seconds = Histogram("payflow_sweep_pass_seconds", "Duration of one sweeper pass.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.due_backlog = Gauge("payflow_sweep_due_backlog", "Payments due for the sweeper now.", registry=r)
        self.oldest_due = Gauge("payflow_sweep_oldest_due_age_seconds",
                                "How long the oldest due payment has been waiting (0 when none).", registry=r)
        self.discrepancies = Counter("payflow_reconciliation_discrepancies",
                                     "Reconciliation discrepancies found, by category.", ["category"], registry=r)

    async def refresh(self, store: PaymentStore, now: dt.datetime) -> None:
        """Read the gauges that belong to the store (several replicas share it, so each reports all)."""
        counts = await store.count_by_state()
        for state in State:
            self.payments.labels(state=state.value).set(counts.get(state, 0))
        self.needs_review.set(counts.get(State.NEEDS_REVIEW, 0))
        due, oldest = await store.due_stats(now)
        self.due_backlog.set(due)
        self.oldest_due.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_transition(self, trigger: str, source: str) -> None:
        self._child(self.transitions, trigger, source).inc()

    def count_notification(self, outcome: str) -> None:
        self._child(self.notifications, outcome).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label set (these counters move on every notification)."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child
