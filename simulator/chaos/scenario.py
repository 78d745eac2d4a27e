"""The seeded scenario: a run's options, what each payer will do and when payflow is killed. Pure; no I/O."""

from __future__ import annotations

import dataclasses
import random

from simulator.backend.faults import BackendFaults
from simulator.wechat.faults import WechatFaults

# The machine's Debian-packaged PostgreSQL; the tests' embedded server brings its own (tests/postgres_server.py).
DB_RESTART_COMMAND = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart"

FATES = ("pays", "never", "late", "wrong_amount", "cancelled")
# How a default population behaves: most pay, some never do, a few pay at the last moment, pay the
# wrong amount, or have their order cancelled at the business before paying.
FATE_WEIGHTS = (0.70, 0.12, 0.08, 0.05, 0.05)
# Which product each payer pays through (a stream of its own, so the fates of a seed stay as they were).
TRADE_TYPES = ("jsapi", "native", "h5", "app")
TRADE_WEIGHTS = (0.50, 0.20, 0.15, 0.15)
# A share of the payers who pay (fate `pays`) are refunded through payflow's API, a while after paying: in full,
# half, in two partial refunds that leave some, or in a partial refund and then the rest. A stream of its own,
# so the fates and products of a seed stay as they were.
REFUND_SHARE = 0.25
REFUND_KINDS = ("full", "half", "two_partials", "partial_then_rest")
REFUND_KIND_WEIGHTS = (0.35, 0.35, 0.15, 0.15)
REFUND_REASON = "chaos refund"
# Every run refunds what the backend refused (the `cancelled` fate) without a person: PAYFLOW_AUTO_REFUND.
AUTO_REFUND = "backend_rejected"


@dataclasses.dataclass
class Options:
    """What one chaos run simulates: the scenario's size and seed, the faults, and payflow's topology."""

    orders: int = 300
    seed: int = 1
    # Payers arriving per second at most: creations spread over `orders / placement_rate` seconds (15 s at
    # least), kept below payflow's place-order budget (PAYFLOW_WECHAT_BUDGETS jsapi, 100/s by default).
    placement_rate: float = 80.0
    # How WeChat signs (the simulator) and payflow verifies: `both` is the migration from platform certificates
    # to the public key; a certificate rotation happens halfway through the payers' arrivals.
    key_mode: str = "both"
    rotate_certificates: bool = True
    strategy: str = "payflow"  # or "naive"
    crashes: int = 2
    ttl: float = 60.0
    time_factor: float = 60.0
    wechat: WechatFaults = dataclasses.field(default_factory=WechatFaults)
    backend: BackendFaults = dataclasses.field(default_factory=BackendFaults)
    settle_timeout: float = 90.0
    progress: bool = True
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # PAYFLOW_* overrides, applied last
    replicas: int = 1
    database: str | None = None  # postgresql://... (a fresh schema per run); None: a temporary SQLite file
    db_restart: bool = False  # restart PostgreSQL once mid-run
    db_restart_command: str = DB_RESTART_COMMAND  # a shell command that returns once PostgreSQL is back


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    amount: int  # fen
    fate: str
    create_at: float  # seconds after the start
    pay_after: float | None  # seconds after creation; None: never pays
    pay_amount: int | None  # what the payer pays (differs from `amount` for wrong_amount)
    polls: int  # how many status polls the payer's page makes after paying
    trade_type: str = "jsapi"
    refund_kind: str | None = None  # one of REFUND_KINDS when the merchant refunds it through payflow
    refunds: tuple[RefundPlan, ...] = ()  # asked one after the other, each with an out_refund_no of its own


@dataclasses.dataclass(frozen=True)
class RefundPlan:
    """One refund the merchant asks payflow for (`POST /v1/payments/{no}/refunds`); retried with the same
    out_refund_no until payflow answers for it."""

    out_refund_no: str
    amount: int  # fen
    after: float  # seconds after the payer paid


@dataclasses.dataclass(frozen=True)
class OutsideRefund:
    """The one refund made outside payflow (on the merchant platform: the WeChat simulator's control API), on a
    paid order payflow does not refund, once the backend has it paid."""

    order_id: str
    out_refund_no: str
    amount: int
    after: float  # seconds after the payer paid


@dataclasses.dataclass(frozen=True)
class Scenario:
    seed: int
    orders: tuple[Order, ...]
    crashes: tuple[float, ...]  # seconds after the start at which payflow is SIGKILLed
    ttl: float
    outside: OutsideRefund | None = None

    @property
    def refund_requests(self) -> int:
        return sum(len(o.refunds) for o in self.orders)

    @property
    def last_event(self) -> float:
        """When the last payer acts (creation or payment), in seconds after the start."""
        return max(o.create_at + (o.pay_after or 0.0) for o in self.orders)


def build(seed: int, orders: int, *, ttl: float = 60.0, spread: float = 15.0, crashes: int = 2,
          placement_rate: float | None = None) -> Scenario:
    rng = random.Random(f"chaos:{seed}")
    products = random.Random(f"chaos-products:{seed}")
    if placement_rate is not None:
        spread = max(spread, orders / placement_rate)
    plan = []
    for i in range(orders):
        fate = rng.choices(FATES, FATE_WEIGHTS)[0]
        amount = rng.randint(1, 50_000)
        create_at = rng.uniform(0.0, spread)
        pay_after: float | None
        pay_amount: int | None = amount
        if fate == "never":
            pay_after, pay_amount = None, None
        elif fate == "late":
            pay_after = ttl - rng.uniform(2.0, 5.0)  # just before the order expires at WeChat
        elif fate == "wrong_amount":
            pay_after = rng.uniform(0.5, 10.0)
            pay_amount = amount + rng.choice((-1, 1)) * rng.randint(1, max(1, amount - 1)) if amount > 1 else 2
        else:
            pay_after = rng.uniform(0.5, 12.0)
        plan.append(Order(f"chaos-{seed}-{i:05d}", amount, fate, round(create_at, 3),
                          None if pay_after is None else round(pay_after, 3), pay_amount, rng.randint(1, 3),
                          products.choices(TRADE_TYPES, TRADE_WEIGHTS)[0]))
    # Crashes while traffic flows: during creation, payments and notifications, and the refunds after them (a
    # refund is asked for up to 15 s after its payment, which is up to 12 s after its creation).
    window = max(spread + 25.0, 6.0)
    kills = tuple(sorted(round(rng.uniform(2.0, window), 3) for _ in range(crashes)))
    plan, outside = _refunds(seed, plan)
    return Scenario(seed, tuple(sorted(plan, key=lambda o: o.create_at)), kills, ttl, outside)


def _refunds(seed: int, plan: list[Order]) -> tuple[list[Order], OutsideRefund | None]:
    """Which paying orders are refunded through payflow, how and when; and the one refunded outside it."""
    rng = random.Random(f"chaos-refunds:{seed}")
    refunded = []
    for order in plan:
        # The same draws for every order, whatever its fate: one order's plan never shifts another's.
        chosen, kind = rng.random() < REFUND_SHARE, rng.choices(REFUND_KINDS, REFUND_KIND_WEIGHTS)[0]
        first, second = round(rng.uniform(1.0, 15.0), 3), round(rng.uniform(1.0, 8.0), 3)
        if order.fate != "pays" or not chosen:
            refunded.append(order)
            continue
        amount = order.amount
        if kind == "half" and amount >= 2:
            amounts = [amount // 2]
        elif kind == "two_partials" and amount >= 3:
            amounts = [amount // 3, amount // 3]
        elif kind == "partial_then_rest" and amount >= 2:
            amounts = [max(1, amount // 3), amount - max(1, amount // 3)]
        else:
            kind, amounts = "full", [amount]
        moments = [first, round(first + second, 3)]
        refunds = tuple(RefundPlan(f"{order.order_id}-r{k + 1}", a, moments[k]) for k, a in enumerate(amounts))
        refunded.append(dataclasses.replace(order, refund_kind=kind, refunds=refunds))
    candidates = [o for o in refunded if o.fate == "pays" and not o.refunds and o.amount >= 2]
    if not candidates:
        return refunded, None
    target = rng.choice(candidates)
    outside = OutsideRefund(target.order_id, f"platform-{target.order_id}", target.amount // 2,
                            round(rng.uniform(3.0, 15.0), 3))
    return refunded, outside
