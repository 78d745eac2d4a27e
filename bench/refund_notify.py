"""A WeChat REFUND.SUCCESS notification beside a TRANSACTION.SUCCESS one: what payflow spends handling each.

    python bench/refund_notify.py [--count N] [--rounds R] [--concurrency C] [--quick] [--json FILE]

In-process, on SQLite (WAL, synchronous=FULL), the same method for both kinds: `PaymentService.handle_notification
(headers, body)` with real signatures and AES-GCM resources (built and signed before anything is timed), once
one at a time ("sequential") and once with C calls in flight ("concurrent", default 64).

The seed database (made once, copied afresh for every pass) holds N `prepaid` payments, which the N
TRANSACTION.SUCCESS notifications pay (`bench/_notify/fixture.py`), and N `synced` payments each with one
`processing` refund of its whole amount, made through the store's verbs (create, pay, sync, create_refund,
accept with a refund_id), which the N REFUND.SUCCESS notifications complete. Both kinds therefore run against
the same database. `--partial` makes the refunds half the amount, so settling the payment moves nothing.

The backend is a null object that acknowledges at once, so the forward after each notification (`payment.paid`,
`refund.succeeded`) costs its store work but no network. As in `serve`, a paid payment's forward is queued (one
forwarder while notifications are in flight), a succeeded refund's is started at once. A pass reports:

- ack: the time until the last `handle_notification` returned (what WeChat waits for), per notification. The
  forwards that ran meanwhile (they interleave with later notifications) are inside it, the rest are not;
- total: ack plus `service.drain()`, i.e. until every forward is acknowledged and written (payments `synced`,
  refunds `synced`, full refunds' payments `refunded`);
- cpu: the process's CPU time (event loop, writer and reader threads) over the total, per notification;
- p50/p99 of the ack latency of single calls;
- commits, writes: durable commits (group-commit batches) and writes per notification, forwards included
  (a sequential pass's notifications still share commits with the previous one's forward);
- other %: CPU used meanwhile by processes outside this benchmark, in % of one core (/proc/stat; the summary
  shows the highest over the rounds).

Each round runs the two kinds back to back (their order alternating), sequential then concurrent; the
summary is the median over rounds with the range, and the refund/payment ratio is taken per round (each
round's pair ran one after the other) and its median printed. An untimed warm-up of 100 of each comes first;
a last untimed pass counts the store calls each kind makes per notification, forwards included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime as dt
import json
import logging
import pathlib
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._notify import fixture  # noqa: E402
from bench._notify.procs import machine_busy_seconds, own_busy_seconds  # noqa: E402
from payflow import devkeys, logs, models  # noqa: E402
from payflow.backend import Delivery  # noqa: E402
from payflow.service import PaymentService  # noqa: E402
from payflow.settings import Settings  # noqa: E402
from payflow.states import Source, State, Trigger  # noqa: E402
from payflow.states.refunds import RefundState, RefundTrigger  # noqa: E402
from payflow.store import PaymentStore, open_store  # noqa: E402
from payflow.store.sqlite import SqliteStore  # noqa: E402
from payflow.wechat import crypto  # noqa: E402
from payflow.wechat.notify import NotificationVerifier  # noqa: E402

AMOUNT = fixture.AMOUNT
KINDS = ("payment", "refund")
EXPECTED = {"payment": "accepted", "refund": "refund_success"}
SEED_CONCURRENCY = 64
# Store calls counted in the last pass: the reads and the writes (each write is one group-committed submit).
READS = ("get", "get_notification", "get_refund", "refunds_of")
WRITES = ("decide", "transition", "transition_refund", "record_notification", "reschedule", "reschedule_refund")


def refund_trade_no(i: int) -> str:
    return f"R{i:012d}"


def out_refund_no(i: int) -> str:
    return f"RF{i:012d}"


class NullBackend:
    """Acknowledges every event at once: the forward costs its store work, not a network round trip."""

    def __init__(self) -> None:
        self.delivered = 0
        self.sent = 0

    async def deliver(self, payment: models.Payment) -> Delivery:
        self.delivered += 1
        return Delivery("acked", 200)

    async def send(self, event_id: str, body: bytes) -> Delivery:
        self.sent += 1
        return Delivery("acked", 200)


# --- the fixture ----------------------------------------------------------------------------------

async def _bounded(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


async def _refundable(store: PaymentStore, i: int, refund_amount: int, now: dt.datetime) -> None:
    """Payment R… created, paid, synced; its refund RF… created, then accepted by WeChat (`processing`)."""
    far = now + dt.timedelta(days=365)  # no sweeper would touch either record
    payment = await store.create(models.Payment(
        out_trade_no=refund_trade_no(i), order_id=f"refund-order-{i}", amount=AMOUNT, description="bench",
        openid="oBench", state=State.CREATED, version=1, created_at=now, updated_at=now,
        expires_at=now + dt.timedelta(hours=2), event_id=f"evt_r{i}", next_attempt_at=far,
    ), source=Source.API.value, detail={})
    payment = await store.transition(
        payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY.value, at=now,
        detail={"amount": AMOUNT, "transaction_id": _refund_transaction_id(i)},
        changes={"transaction_id": _refund_transaction_id(i), "paid_amount": AMOUNT, "paid_at": now,
                 "next_attempt_at": far})
    await store.transition(payment, State.SYNCED, Trigger.SYNC, source=Source.BACKEND.value, at=now,
                           detail={"status": 200})
    refund, created = await store.create_refund(models.Refund(
        out_refund_no=out_refund_no(i), out_trade_no=refund_trade_no(i), amount=refund_amount,
        state=RefundState.CREATED, version=1, created_at=now, updated_at=now, event_id=f"revt_{i}",
        origin="api", next_attempt_at=far,
    ), refundable=AMOUNT, source=Source.API.value, detail={"amount": refund_amount})
    assert created
    await store.transition_refund(refund, RefundState.PROCESSING, RefundTrigger.ACCEPT, source=Source.API.value,
                                  at=now, detail={"refund_id": _refund_id(i)},
                                  changes={"refund_id": _refund_id(i), "next_attempt_at": far})


def _refund_transaction_id(i: int) -> str:
    return f"4200001{i:021d}"


def _refund_id(i: int) -> str:
    return f"5030{i:025d}"


async def seed(path: pathlib.Path, count: int, refund_amount: int) -> None:
    await fixture.prefill(path, count)  # N000000000000… in `prepaid`
    store = await SqliteStore.open(str(path))
    try:
        now = dt.datetime.now(dt.UTC)
        await _bounded([lambda i=i: _refundable(store, i, refund_amount, now) for i in range(count)],
                       SEED_CONCURRENCY)
        states = await store.count_by_state()
        refunds = await store.count_refunds_by_state()
        assert states == {State.PREPAID: count, State.SYNCED: count}, states
        assert refunds == {RefundState.PROCESSING: count}, refunds
    finally:
        await store.close()


def refund_notifications(keys: devkeys.KeySet, count: int, refund_amount: int) -> list[tuple[bytes, dict[str, str]]]:
    """REFUND.SUCCESS for refunds 0..count, as WeChat sends them (docs/wechatpay-refunds.md §R.3), signed now."""
    stamp = int(time.time())
    built = []
    for i in range(count):
        resource = {
            "mchid": keys.mchid, "out_trade_no": refund_trade_no(i), "transaction_id": _refund_transaction_id(i),
            "out_refund_no": out_refund_no(i), "refund_id": _refund_id(i), "refund_status": "SUCCESS",
            "success_time": "2026-11-27T14:15:26+08:00",
            "amount": {"total": AMOUNT, "refund": refund_amount, "payer_total": AMOUNT, "payer_refund": refund_amount},
            "user_received_account": "支付用户零钱",
        }
        nonce = crypto.nonce_str(12)
        ciphertext = crypto.aead_encrypt(keys.apiv3_key, nonce, "refund",
                                         json.dumps(resource, ensure_ascii=False).encode())
        body = json.dumps({
            "id": f"bench-refund-{i}", "create_time": "2026-11-27T14:15:27+08:00",
            "resource_type": "encrypt-resource", "event_type": "REFUND.SUCCESS", "summary": "退款成功",
            "resource": {"original_type": "refund", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                         "associated_data": "refund", "nonce": nonce},
        }, ensure_ascii=False, separators=(",", ":")).encode()
        headers = crypto.sign_response_headers(keys.platform_private_key, keys.pub_key_id, body, timestamp=stamp,
                                               nonce=secrets.token_hex(16))
        built.append((body, {**headers, **fixture._EXTRA_HEADERS}))
    return built


# --- one pass ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pass:
    kind: str
    mode: str
    round: int
    n: int
    ack_s: float
    drain_s: float
    cpu_s: float
    p50_us: float
    p99_us: float
    other_percent: float  # of one core, used by processes outside this benchmark during the pass
    commits: float  # durable commits (group-commit batches) per notification, forwards included
    writes: float  # writes (store calls that write) per notification, forwards included

    @property
    def ack_us(self) -> float:
        return self.ack_s / self.n * 1e6

    @property
    def total_us(self) -> float:
        return (self.ack_s + self.drain_s) / self.n * 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.n * 1e6


class Bench:
    def __init__(self, directory: pathlib.Path, count: int, refund_amount: int, concurrency: int) -> None:
        self.directory = directory
        self.count = count
        self.refund_amount = refund_amount
        self.concurrency = concurrency
        self.keys = devkeys.write_keyset(directory / "keys")
        env = devkeys.env_lines(self.keys, payflow_url="http://127.0.0.1:1", wechat_url="http://127.0.0.1:2",
                                backend_url="http://127.0.0.1:3/events")
        self.env = env
        self.notes: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        self.verifier: NotificationVerifier | None = None
        self._pass = 0

    async def prepare(self) -> float:
        start = time.perf_counter()
        await seed(self.directory / "seed.db", self.count, self.refund_amount)
        self.notes["payment"] = fixture.build(self.keys, 0, self.count)
        self.notes["refund"] = refund_notifications(self.keys, self.count, self.refund_amount)
        # As if every notification arrived the moment it was signed, however long the run takes.
        signed_at = float(self.notes["payment"][0][1]["Wechatpay-Timestamp"])
        self.verifier = NotificationVerifier({self.keys.pub_key_id: self.keys.platform_public_key},
                                             self.keys.apiv3_key, now=lambda: signed_at)
        return time.perf_counter() - start

    async def _service(self) -> tuple[PaymentService, PaymentStore, NullBackend]:
        self._pass += 1
        database = self.directory / f"pass{self._pass}.db"
        shutil.copyfile(self.directory / "seed.db", database)
        settings = Settings.from_env({**self.env, "PAYFLOW_DATABASE_URL": f"sqlite:///{database}"})
        store = await open_store(settings.database_url)
        backend = NullBackend()
        return PaymentService(store, settings, verifier=self.verifier, backend=backend), store, backend

    async def run(self, kind: str, mode: str, round_: int) -> Pass:
        service, store, backend = await self._service()
        notes = self.notes[kind]
        latencies: list[float] = []
        outcomes: collections.Counter[str] = collections.Counter()
        handle = service.handle_notification
        try:
            async def one(headers: dict[str, str], body: bytes) -> None:
                start = time.perf_counter()
                outcome = await handle(headers, body)
                latencies.append(time.perf_counter() - start)
                outcomes[outcome] += 1

            writer = store.writes.stats  # type: ignore[attr-defined]
            batches, writes = writer.batches, writer.writes
            machine, own = machine_busy_seconds(), own_busy_seconds()
            cpu, start = time.process_time(), time.perf_counter()
            if mode == "sequential":
                for body, headers in notes:
                    await one(headers, body)
            else:
                gate = asyncio.Semaphore(self.concurrency)

                async def gated(headers: dict[str, str], body: bytes) -> None:
                    async with gate:
                        await one(headers, body)

                await asyncio.gather(*(gated(headers, body) for body, headers in notes))
            acked = time.perf_counter()
            await service.drain(grace=600)
            drained = time.perf_counter()
            cpu_s = time.process_time() - cpu
            other = (machine_busy_seconds() - machine) - (own_busy_seconds() - own)
            batches, writes = writer.batches - batches, writer.writes - writes
            await self._check(kind, store, backend, outcomes)
        finally:
            await store.close()
            for suffix in ("", "-wal", "-shm"):
                (self.directory / f"pass{self._pass}.db{suffix}").unlink(missing_ok=True)
        ordered = sorted(latencies)
        return Pass(kind, mode, round_, len(notes), acked - start, drained - acked, cpu_s,
                    statistics.median(ordered) * 1e6, ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1e6,
                    round(max(other, 0.0) / (drained - start) * 100, 1), batches / len(notes), writes / len(notes))

    async def _check(self, kind: str, store: PaymentStore, backend: NullBackend,
                     outcomes: collections.Counter[str]) -> None:
        n = self.count
        if outcomes != {EXPECTED[kind]: n}:
            raise AssertionError(f"{kind}: outcomes {dict(outcomes)}")
        payments = await store.count_by_state()
        refunds = await store.count_refunds_by_state()
        if kind == "payment":
            want = {State.SYNCED: 2 * n}, {RefundState.PROCESSING: n}, (n, 0)
        else:
            settled = State.REFUNDED if self.refund_amount == AMOUNT else State.SYNCED
            want = {State.PREPAID: n, settled: n}, {RefundState.SYNCED: n}, (0, n)
        got = payments, refunds, (backend.delivered, backend.sent)
        if got != want:
            raise AssertionError(f"{kind}: after drain {got}, expected {want}")

    async def warm(self, count: int) -> None:
        """A few of each kind on a throwaway copy first, so round 1 does not pay for first use."""
        for kind in KINDS:
            service, store, _ = await self._service()
            try:
                for body, headers in self.notes[kind][:count]:
                    await service.handle_notification(headers, body)
                await service.drain(grace=600)
            finally:
                await store.close()

    async def count_calls(self, count: int) -> dict[str, dict[str, dict[str, float]]]:
        """Store calls per notification of each kind, forwards included, on a fresh copy each, and the mean wall
        time of each kind of call (a read: its hop to the reader thread; a write: its durable commit), strictly
        one notification and its forward at a time, so no call overlaps another."""
        per_kind: dict[str, dict[str, dict[str, float]]] = {}
        for kind in KINDS:
            service, store, _ = await self._service()
            calls: collections.Counter[str] = collections.Counter()
            spent: collections.Counter[str] = collections.Counter()
            for name in (*READS, *WRITES):
                setattr(store, name, _timed_call(getattr(store, name), name, calls, spent))
            try:
                for body, headers in self.notes[kind][:count]:
                    await service.handle_notification(headers, body)
                    await service.drain(grace=600)  # its forward too, before the next one starts
            finally:
                await store.close()
            per_kind[kind] = {name: {"per_notification": calls[name] / count,
                                     "mean_us": round(spent[name] / calls[name] * 1e6, 1)}
                              for name in (*READS, *WRITES) if calls[name]}
        return per_kind


def _timed_call(original: Callable[..., Awaitable[Any]], name: str, calls: collections.Counter[str],
                spent: collections.Counter[str]) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    return timed


# --- the report ---------------------------------------------------------------------------------------

def _median_range(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def summarize(passes: list[Pass], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for mode in ("sequential", "concurrent"):
        for kind in KINDS:
            mine = [p for p in passes if p.kind == kind and p.mode == mode]
            rows.append({
                "mode": mode, "kind": kind, "n": mine[0].n, "rounds": len(mine),
                "ack_us": statistics.median(p.ack_us for p in mine),
                "ack_us_range": [min(p.ack_us for p in mine), max(p.ack_us for p in mine)],
                "ack_per_s": statistics.median(1e6 / p.ack_us for p in mine),
                "total_us": statistics.median(p.total_us for p in mine),
                "total_us_range": [min(p.total_us for p in mine), max(p.total_us for p in mine)],
                "total_per_s": statistics.median(1e6 / p.total_us for p in mine),
                "drain_ms": statistics.median(p.drain_s * 1000 for p in mine),
                "cpu_us": statistics.median(p.cpu_us for p in mine),
                "cpu_us_range": [min(p.cpu_us for p in mine), max(p.cpu_us for p in mine)],
                "p50_us": statistics.median(p.p50_us for p in mine),
                "p99_us": statistics.median(p.p99_us for p in mine),
                "other_percent_max": max(p.other_percent for p in mine),
                "commits": statistics.median(p.commits for p in mine),
                "writes": statistics.median(p.writes for p in mine),
            })
        for metric in ("ack_us", "total_us", "cpu_us"):
            ratios = []
            for r in range(rounds):
                pair = {p.kind: p for p in passes if p.mode == mode and p.round == r}
                ratios.append(getattr(pair["refund"], metric) / getattr(pair["payment"], metric))
            rows.append({"mode": mode, "kind": "ratio", "metric": metric, "median": statistics.median(ratios),
                         "per_round": ratios})
    return rows


def print_report(rows: list[dict[str, Any]], calls: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'mode':<11}{'kind':<9}{'n':>7}{'ack us (range)':>24}{'ack/s':>8}{'total us (range)':>24}"
          f"{'total/s':>9}{'drain ms':>10}{'cpu us (range)':>22}{'p50 us':>9}{'p99 us':>9}{'commits':>8}{'writes':>7}"
          f"{'other %':>9}")
    for row in rows:
        if row["kind"] == "ratio":
            continue
        ack = _range_text(row["ack_us"], row["ack_us_range"])
        total = _range_text(row["total_us"], row["total_us_range"])
        cpu = _range_text(row["cpu_us"], row["cpu_us_range"])
        print(f"{row['mode']:<11}{row['kind']:<9}{row['n']:>7}{ack:>24}{row['ack_per_s']:>8,.0f}{total:>24}"
              f"{row['total_per_s']:>9,.0f}{row['drain_ms']:>10,.1f}{cpu:>22}{row['p50_us']:>9,.0f}"
              f"{row['p99_us']:>9,.0f}{row['commits']:>8.2f}{row['writes']:>7.2f}"
              f"{row['other_percent_max']:>9.1f}")
    print("\nrefund / payment, median of the per-round ratios (per round):")
    for row in rows:
        if row["kind"] == "ratio":
            per_round = ", ".join(f"{r:.2f}" for r in row["per_round"])
            print(f"  {row['mode']:<11}{row['metric']:<9}{row['median']:>6.2f}   ({per_round})")
    print("\nstore calls per notification (one at a time, forwards included), mean wall us per call:")
    for kind, per in calls.items():
        print(f"  {kind:<8} " + ", ".join(f"{name} {v['per_notification']:g} x {v['mean_us']:.0f}"
                                          for name, v in per.items()))


def _range_text(value: float, span: list[float]) -> str:
    if span[0] == span[1]:
        return f"{value:,.0f}"
    return f"{value:,.0f} ({span[0]:,.0f}-{span[1]:,.0f})"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(pathlib.Path(tmp), args.count, AMOUNT // 2 if args.partial else AMOUNT, args.concurrency)
        seeded = await bench.prepare()
        print(f"seeded {args.count:,} + {args.count:,} payments and signed {2 * args.count:,} notifications "
              f"in {seeded:.1f} s", flush=True)
        await bench.warm(min(args.count, 100))
        passes: list[Pass] = []
        for r in range(args.rounds):
            kinds = KINDS if r % 2 == 0 else KINDS[::-1]
            for mode in ("sequential", "concurrent"):
                for kind in kinds:
                    done = await bench.run(kind, mode, r)
                    passes.append(done)
                    print(f"round {r + 1} {mode:<10} {kind:<7} ack {done.ack_us:7.0f} us  total "
                          f"{done.total_us:7.0f} us  drain {done.drain_s * 1000:7.1f} ms  cpu {done.cpu_us:6.0f} us  "
                          f"other {done.other_percent:5.1f}% of a core  commits {done.commits:.2f}",
                          flush=True)
        calls = await bench.count_calls(min(args.count, 200))
    rows = summarize(passes, args.rounds)
    print()
    print_report(rows, calls)
    return {"count": args.count, "rounds": args.rounds, "concurrency": args.concurrency,
            "refund_amount": AMOUNT // 2 if args.partial else AMOUNT, "summary": rows,
            "store_calls_per_notification": calls, "passes": [dataclasses.asdict(p) for p in passes]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="notifications of each kind per pass")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--partial", action="store_true", help="refund half of each payment (it stays synced)")
    parser.add_argument("--quick", action="store_true", help="500 of each, 1 round (under 20 s)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/refund_notify.json"))
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 500, 1
    logs.configure_logging("json", logging.ERROR)
    start = time.perf_counter()
    result = asyncio.run(main_async(args))
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\n{result['seconds']} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
