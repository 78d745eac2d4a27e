"""The WeChat simulator's fault plan: `WechatFaults` (what may go wrong, validated, JSON and CLI forms)
and `FaultDice` (the seeded random streams that decide when it does)."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

_PROBABILITIES = (
    "drop_first", "drop_retry", "never_deliver", "duplicate", "reorder", "probe",
    "corrupt_signature", "api_500", "api_429", "api_500_applied", "refund_abnormal",
)
_RANGES = (("delay_min", "delay_max"), ("api_latency_min", "api_latency_max"))
# WeChat limits each API separately (calls per second per merchant; 0: no limit), answering 429
# FREQUENCY_LIMITED beyond it. Which API a request is: `api_of`.
LIMITS = {"limit_jsapi": "jsapi", "limit_query": "query", "limit_close": "close", "limit_bill": "bill",
          "limit_refund": "refund", "limit_refund_query": "refund_query"}

_HELP = {
    "drop_first": "probability that a notification's first send is silently dropped",
    "drop_retry": "probability that each notification retry is silently dropped",
    "never_deliver": "probability that a notification is dropped on every attempt",
    "delay_min": "minimum extra delay (s, divided by --time-factor) before each notification send",
    "delay_max": "maximum extra delay (s, divided by --time-factor) before each notification send",
    "duplicate": "probability that a notification send is posted twice",
    "reorder": "probability that a new notification is held back and sent after the next one",
    "probe": "probability that a send is preceded by a WECHATPAY/SIGNTEST/ signature probe",
    "corrupt_signature": "probability that a send carries a wrong (well-formed) signature",
    "api_500": "probability that an API call answers 500 SYSTEM_ERROR",
    "api_429": "probability that an API call answers 429 FREQUENCY_LIMITED",
    "api_500_applied": "share of injected 500s that come after the call took effect",
    "api_latency_min": "minimum real latency (s) added to every API call",
    "api_latency_max": "maximum real latency (s) added to every API call",
    "limit_jsapi": "JSAPI place-order calls per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "limit_query": "order queries per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "limit_close": "close calls per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "limit_bill": "bill requests and downloads per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "limit_refund": "refund applications per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "limit_refund_query": "refund queries per second before 429 FREQUENCY_LIMITED (0: no limit)",
    "refund_delay": "seconds (divided by --time-factor) a refund stays PROCESSING before it completes",
    "refund_abnormal": "probability that a refund completes ABNORMAL instead of SUCCESS",
}


@dataclasses.dataclass(frozen=True)
class WechatFaults:
    """What the WeChat simulator may do wrong. The default plan does nothing wrong."""

    drop_first: float = 0.0
    drop_retry: float = 0.0
    never_deliver: float = 0.0
    delay_min: float = 0.0
    delay_max: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    probe: float = 0.0
    corrupt_signature: float = 0.0
    api_500: float = 0.0
    api_429: float = 0.0
    api_500_applied: float = 0.0
    api_latency_min: float = 0.0
    api_latency_max: float = 0.0
    limit_jsapi: float = 0.0
    limit_query: float = 0.0
    limit_close: float = 0.0
    limit_bill: float = 0.0
    limit_refund: float = 0.0
    limit_refund_query: float = 0.0
    refund_delay: float = 0.0
    refund_abnormal: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # bool is an int; `true` in a JSON plan is a mistake, not a probability of 1.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{field.name}: expected a finite number, got {value!r}")
            object.__setattr__(self, field.name, float(value))
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: probability must be between 0 and 1, got {getattr(self, name)}")
        for low, high in _RANGES:
            if getattr(self, low) < 0 or getattr(self, high) < 0:
                raise ValueError(f"{low}/{high}: seconds must not be negative")
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}: must not exceed {high}")
        for name in LIMITS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: calls per second must not be negative")
        if self.refund_delay < 0:
            raise ValueError("refund_delay: seconds must not be negative")
        if self.api_500 + self.api_429 > 1.0:
            raise ValueError("api_500: api_500 + api_429 must not exceed 1")

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> WechatFaults:
        """Strict: unknown fields, non-numbers and out-of-range values raise ValueError naming the field."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ValueError(f"fault plan is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise ValueError("fault plan must be a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown fault field")
        return cls(**data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag-name VALUE` per `WechatFaults` field (e.g. `--drop-first 0.3`)."""
    group = parser.add_argument_group("fault plan (default: no faults)")
    for field in dataclasses.fields(WechatFaults):
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=float,
            default=field.default,
            metavar="P" if field.name in _PROBABILITIES else ("RATE" if field.name in LIMITS else "SECONDS"),
            help=_HELP[field.name],
        )


def from_args(args: argparse.Namespace) -> WechatFaults:
    """The plan the command line asked for; raises ValueError naming a bad flag's field."""
    return WechatFaults(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WechatFaults)})


@dataclasses.dataclass(frozen=True)
class ApiFault:
    kind: Literal["none", "system_error", "frequency_limited"]
    applied: bool  # a system_error that comes after the call took effect
    latency: float


@dataclasses.dataclass(frozen=True)
class SendFaults:
    dropped: bool
    probe: bool
    corrupt: bool
    duplicate: bool
    next_delay: float  # extra delay for the retry this attempt would schedule, before time_factor


@dataclasses.dataclass(frozen=True)
class RefundFaults:
    abnormal: bool
    delay: float  # before time_factor


@dataclasses.dataclass(frozen=True)
class QueueFaults:
    never_deliver: bool
    reorder: bool
    delay: float


class FaultDice:
    """The current plan and its seeded random streams; owned by one simulator, never the global RNG.

    Each roll draws a fixed number of values whatever the plan says, so replacing the plan never shifts
    later decisions, and API traffic never perturbs notification decisions (separate streams).
    """

    def __init__(self, plan: WechatFaults | None = None, seed: int = 0, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan or WechatFaults()
        self.seed = seed
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # api → (tokens, when counted)
        self._api = random.Random(f"wechat-api:{seed}")
        self._notify = random.Random(f"wechat-notify:{seed}")
        self._refund = random.Random(f"wechat-refund:{seed}")  # how each accepted refund turns out
        # What was actually injected, for reports: api_500, api_500_applied, api_429, never_deliver, reorder.
        self.injected: collections.Counter[str] = collections.Counter()

    def api(self) -> ApiFault:
        plan, rng = self.plan, self._api
        kind_roll, applied_roll = rng.random(), rng.random()
        latency = rng.uniform(plan.api_latency_min, plan.api_latency_max)
        kind: Literal["none", "system_error", "frequency_limited"] = "none"
        if kind_roll < plan.api_500:
            kind = "system_error"
        elif kind_roll < plan.api_500 + plan.api_429:
            kind = "frequency_limited"
        applied = kind == "system_error" and applied_roll < plan.api_500_applied
        if kind != "none":
            self.injected["api_500_applied" if applied else ("api_500" if kind == "system_error" else "api_429")] += 1
        return ApiFault(kind=kind, applied=applied, latency=latency)

    def admit(self, api: str) -> bool:
        """Whether WeChat's per-API limit lets this call through now (a token bucket holding one second of
        calls, on real time); a refusal counts as `limited_<api>`. Not a dice roll: it uses no random value."""
        rate = getattr(self.plan, f"limit_{api}", 0.0)
        if rate <= 0:
            return True
        now = self._monotonic()
        tokens, counted = self._buckets.get(api, (rate, now))
        tokens = min(max(rate, 1.0), tokens + (now - counted) * rate)
        if tokens < 1:
            self._buckets[api] = (tokens, now)
            self.injected[f"limited_{api}"] += 1
            return False
        self._buckets[api] = (tokens - 1, now)
        return True

    def refund(self) -> RefundFaults:
        abnormal = self._refund.random() < self.plan.refund_abnormal
        if abnormal:
            self.injected["refund_abnormal"] += 1
        return RefundFaults(abnormal=abnormal, delay=self.plan.refund_delay)

    def queued(self) -> QueueFaults:
        plan, rng = self.plan, self._notify
        never, reorder = rng.random() < plan.never_deliver, rng.random() < plan.reorder
        delay = rng.uniform(plan.delay_min, plan.delay_max)
        self.injected.update(k for k, hit in (("never_deliver", never), ("reorder", reorder)) if hit)
        return QueueFaults(never_deliver=never, reorder=reorder, delay=delay)

    def send(self, *, first: bool) -> SendFaults:
        plan, rng = self.plan, self._notify
        drop_roll, probe_roll, corrupt_roll, dup_roll = (rng.random() for _ in range(4))
        delay = rng.uniform(plan.delay_min, plan.delay_max)
        return SendFaults(
            dropped=drop_roll < (plan.drop_first if first else plan.drop_retry),
            probe=probe_roll < plan.probe,
            corrupt=corrupt_roll < plan.corrupt_signature,
            duplicate=dup_roll < plan.duplicate,
            next_delay=delay,
        )


def api_of(method: str, path: str) -> str:
    """Which of WeChat's separately limited APIs a request calls (`other` for those without a limit here)."""
    if path.startswith("/v3/pay/transactions/"):
        if method == "POST" and path.endswith("/close"):
            return "close"
        if method == "POST":
            return path.rsplit("/", 1)[-1]  # jsapi (native, h5, app: each its own API)
        return "query"
    if path.startswith(("/v3/bill/", "/v3/billdownload/")):
        return "bill"
    if path.startswith("/v3/refund/domestic/refunds"):
        return "refund" if method == "POST" else "refund_query"
    return "other"
