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


@dataclasses.dataclass(frozen=True)
class Scenario:
    seed: int
    orders: tuple[Order, ...]
    crashes: tuple[float, ...]  # seconds after the start at which payflow is SIGKILLed
    ttl: float

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
    # Crashes while traffic flows: during creation, payments and notifications.
    window = max(spread + 10.0, 6.0)
    kills = tuple(sorted(round(rng.uniform(2.0, window), 3) for _ in range(crashes)))
    return Scenario(seed, tuple(sorted(plan, key=lambda o: o.create_at)), kills, ttl)
