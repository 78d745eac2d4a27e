"""SIGTERM to a real `run.py serve` against in-process simulators: a busy one finishes its in-flight requests
and forwards, exits 0 and keeps everything it acknowledged; an idle one exits at once and leaves a clean
database; a stop during a slow sweeper pass is measured against its coded bound. After each stop, a restart
on the same database brings every paid payment to `synced` (the `notified` row is the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from payflow import devkeys
from payflow.devkeys import KeySet
from payflow.states import State
from payflow.store import open_store
from simulator import backend as backend_sim
from simulator.backend.faults import BackendFaults
from simulator.wechat import appkeys as wechat_keys
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.faults import WechatFaults

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = 7
API = {"Authorization": "Bearer api"}
PAID = frozenset({State.NOTIFIED, State.SYNCED})
Sims = tuple[TestServer, TestServer]


@dataclasses.dataclass
class Serve:
    """One `run.py serve` process. A thread drains its stderr: a busy payflow logs more than a pipe holds,
    and a full pipe would block it mid-shutdown."""

    process: subprocess.Popen[str]
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    raw: list[str] = dataclasses.field(default_factory=list)
    listening: threading.Event = dataclasses.field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                record["monotonic"] = time.monotonic()
                self.records.append(record)
                if record.get("event") == "serve.listening":
                    self.listening.set()

    async def ready(self) -> None:
        if not await asyncio.to_thread(self.listening.wait, 30):
            raise AssertionError(f"payflow did not listen; stderr:\n{''.join(self.raw)}")

    def count(self, event: str) -> int:
        return sum(r.get("event") == event for r in list(self.records))

    def first(self, event: str) -> float | None:
        return next((r["monotonic"] for r in list(self.records) if r.get("event") == event), None)

    async def stop(self, within: float) -> tuple[int, float]:
        """SIGTERM; the exit code and seconds until the process was gone (its stderr read to the end)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, within)
        elapsed = time.monotonic() - started
        assert self.reader is not None
        await asyncio.to_thread(self.reader.join, 10)
        return code, elapsed

    def assert_clean_stop(self) -> None:
        text = "".join(self.raw)
        events = [r.get("event") for r in self.records]
        assert "serve.stopping" in events and "serve.stopped" in events, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        errors = [r for r in self.records if r.get("level") in ("error", "critical")]
        assert not errors, errors


@pytest.fixture
async def sims(keyset: KeySet) -> AsyncIterator[Sims]:
    # Real time, but sped-up WeChat retries; the backend holds answers with the real asyncio.sleep.
    wechat = TestServer(create_wechat_sim(keyset, time_factor=100.0, seed=SEED), host="127.0.0.1")
    backend = TestServer(backend_sim.create_app(keyset.backend_secret, seed=SEED), host="127.0.0.1")
    await wechat.start_server()
    await backend.start_server()
    yield wechat, backend
    await backend.close()
    await wechat.close()


@pytest.fixture
def launch(sims: Sims) -> Iterator[Callable[[dict[str, str]], Awaitable[Serve]]]:
    """Starts `run.py serve` processes; every one is killed before the simulators close, also on failure."""
    started: list[Serve] = []

    async def start(env: dict[str, str]) -> Serve:
        process = subprocess.Popen([sys.executable, "run.py", "serve"], cwd=ROOT, env=env,  # noqa: ASYNC220
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        serve = Serve(process)
        started.append(serve)
        serve.reader = threading.Thread(target=serve.read, name=f"stderr-{process.pid}", daemon=True)
        serve.reader.start()
        await serve.ready()
        return serve

    yield start
    for serve in started:
        if serve.process.poll() is None:
            serve.process.kill()
        serve.process.wait(10)
        if serve.reader is not None:
            serve.reader.join(10)
        if serve.process.stderr is not None:
            serve.process.stderr.close()


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Keeps a number on the test's report (and prints it, for `-s`): stop timings are worth seeing."""

    def keep(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))
        print(f"{request.node.name}: {name}={value}")

    return keep


def _env(keyset: KeySet, sims: Sims, db: pathlib.Path, port: int, **extra: str) -> dict[str, str]:
    wechat, backend = sims
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env.update(devkeys.env_lines(keyset, payflow_url=f"http://127.0.0.1:{port}",
                                 wechat_url=str(wechat.make_url("")).rstrip("/"),
                                 backend_url=str(backend.make_url(devkeys.BACKEND_SIM_PATH))))
    env.update(PAYFLOW_DATABASE_URL=f"sqlite:///{db}", PAYFLOW_PORT=str(port), PAYFLOW_API_TOKEN="api",
               PAYFLOW_ADMIN_TOKEN="admin", PAYFLOW_LOG_FORMAT="json", **extra)
    return env


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Real processes take real time: poll (briefly, for at most 20 s) until `check()` holds."""
    async with asyncio.timeout(20):
        while not await check():  # noqa: ASYNC110 (the state lives in another process)
            await asyncio.sleep(0.05)


async def _create(http: aiohttp.ClientSession, base: str, order_id: str) -> tuple[int | None, dict[str, Any]]:
    """POST /v1/payments; (None, {}) when payflow gave no answer (refused, reset, closed mid-request)."""
    try:
        async with http.post(f"{base}/v1/payments", headers=API, json={
                "order_id": order_id, "amount": 1999, "description": "Beans", "openid": "oPayer"}) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None, {}


async def _pay(http: aiohttp.ClientSession, wechat: TestServer, out_trade_no: str) -> None:
    async with http.post(wechat.make_url(f"/sim/v1/transactions/{out_trade_no}/pay")) as response:
        assert response.status == 200, await response.text()


async def _create_all(http: aiohttp.ClientSession, base: str, order_ids: list[str]) -> list[str]:
    answers = await asyncio.gather(*(_create(http, base, order_id) for order_id in order_ids))
    assert all(status == 201 for status, _ in answers), answers
    return [body["out_trade_no"] for _, body in answers]


def _assert_clean_database(db: pathlib.Path, synced: str) -> None:
    # Both connections were closed: the last one checkpointed the WAL and removed it.
    assert not pathlib.Path(f"{db}-wal").exists()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        assert conn.execute("SELECT state FROM payments WHERE out_trade_no = ?", (synced,)).fetchone() == ("synced",)


async def _states(http: aiohttp.ClientSession, base: str, numbers: list[str]) -> dict[str, str]:
    async def one(no: str) -> tuple[str, str]:
        async with http.get(f"{base}/v1/payments/{no}", headers=API) as response:
            return no, (await response.json())["state"]

    return dict(await asyncio.gather(*(one(no) for no in numbers)))


async def test_sigterm_to_a_busy_serve_loses_nothing_acknowledged(
    tmp_path: pathlib.Path, keyset: KeySet, sims: Sims, launch: Callable[[dict[str, str]], Awaitable[Serve]],
    measure: Callable[[str, object], None],
) -> None:
    wechat, backend = sims
    faults = backend.app[backend_sim.FAULTS]
    # Every forward takes 0.5 s and every WeChat API call 0.3 s, so work is in flight whenever we stop.
    faults.plan = BackendFaults(latency=(0.5, 0.5))
    wechat.app[wechat_keys.FAULTS].plan = WechatFaults(api_latency_min=0.3, api_latency_max=0.3)
    port, db = unused_port(), tmp_path / "payflow.db"
    base = f"http://127.0.0.1:{port}"
    # The sweeper queries every unpaid payment each second: it, too, is mid-pass when SIGTERM comes.
    env = _env(keyset, sims, db, port, PAYFLOW_BACKEND_TIMEOUT="5s", PAYFLOW_WECHAT_TIMEOUT="5s",
               PAYFLOW_LEASE="2s", PAYFLOW_SWEEP_INTERVAL="100ms", PAYFLOW_QUERY_SCHEDULE="1s",
               PAYFLOW_RECONCILE_AT="off")
    first = await launch(env)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        numbers = await _create_all(http, base, [f"order-{i:03d}" for i in range(30)])
        await asyncio.gather(*(_pay(http, wechat, no) for no in numbers[:20]))

        async def forwarding() -> bool:
            return faults.busy > 0

        await _until(forwarding)
        # A burst: new payments (each held 0.3 s in its WeChat placement) while the last payers pay.
        burst = [asyncio.create_task(_create(http, base, f"burst-{i:03d}")) for i in range(20)]
        paying = [asyncio.create_task(_pay(http, wechat, no)) for no in numbers[20:]]

        async def burst_in_flight() -> bool:
            return first.count("payment.created") >= len(numbers) + 5

        await _until(burst_in_flight)
        # Stored before SIGTERM, each then held 0.3 s placing at WeChat: requests in flight when we stop.
        placing = {r["order_id"] for r in list(first.records)
                   if r.get("event") == "payment.created" and r["order_id"].startswith("burst-")}
        in_flight = faults.busy
        stopping = asyncio.create_task(first.stop(within=30))
        await asyncio.sleep(0)  # SIGTERM is out; these come too late and may go unanswered
        late = [asyncio.create_task(_create(http, base, f"late-{i:03d}")) for i in range(10)]
        code, elapsed = await stopping
        answers = await asyncio.gather(*burst, *late)
        await asyncio.gather(*paying)

        measure("busy_stop_seconds", round(elapsed, 2))
        measure("forwards_in_flight_at_sigterm", in_flight)
        measure("creates_in_flight_at_sigterm", len(placing))
        assert code == 0
        first.assert_clean_stop()
        # Nothing here waits for a grace: in-flight work is 0.5 s forwards and 0.3 s WeChat calls.
        assert elapsed < 5, elapsed

        acked_creates = [body for status, body in answers if status in (200, 201)]
        measure("creates_answered", len(acked_creates))
        measure("creates_unanswered", sum(status is None for status, _ in answers))
        # In-flight requests were finished, not dropped; later ones may have gone unanswered.
        assert placing <= {body["order_id"] for body in acked_creates}, (placing, answers)
        assert all(status in (200, 201, None) for status, _ in answers), answers
        acked_notifications = [n for n in wechat.app[wechat_keys.NOTIFIER].notifications() if n.stats.acked]
        assert acked_notifications  # the check below is not vacuous

        store = await open_store(f"sqlite:///{db}")
        try:
            for body in acked_creates:
                stored = await store.get(body["out_trade_no"])
                assert stored is not None and stored.order_id == body["order_id"], body
            for note in acked_notifications:
                paid = await store.get(note.out_trade_no)
                assert paid is not None and paid.state in PAID, (note.out_trade_no, paid)
                assert await store.get_notification(note.id) is not None
            after_stop = {no: (await store.get(no)).state for no in numbers}  # type: ignore[union-attr]
        finally:
            await store.close()
        measure("paid_at_wechat_still_prepaid_after_stop", sum(s is State.PREPAID for s in after_stop.values()))
        # Forwards in flight at SIGTERM (0.5 s each) were let finish: drain's grace is the backend timeout + 1 s.
        assert State.NOTIFIED not in after_stop.values(), after_stop
        for no, state in after_stop.items():
            if state is State.SYNCED:
                assert backend.app[backend_sim.LEDGER].orders[f"order-{numbers.index(no):03d}"].status == "paid"

        # Restarted on the same database with a healthy backend: every payment the payers paid is synced,
        # also those whose notification the stop left unanswered (WeChat retries, the sweeper queries).
        faults.plan = BackendFaults()
        wechat.app[wechat_keys.FAULTS].plan = WechatFaults()
        second = await launch(env)

        async def all_synced() -> bool:
            return set((await _states(http, base, numbers)).values()) == {"synced"}

        await _until(all_synced)
        ledger = backend.app[backend_sim.LEDGER].orders
        assert all(ledger[f"order-{i:03d}"].status == "paid" for i in range(len(numbers)))
        code, _ = await second.stop(within=30)
        assert code == 0
        second.assert_clean_stop()


async def test_sigterm_to_an_idle_serve_exits_at_once_and_leaves_a_clean_database(
    tmp_path: pathlib.Path, keyset: KeySet, sims: Sims, launch: Callable[[dict[str, str]], Awaitable[Serve]],
    measure: Callable[[str, object], None],
) -> None:
    wechat, _ = sims
    port, db = unused_port(), tmp_path / "payflow.db"
    base = f"http://127.0.0.1:{port}"
    # Production cadences (5 s sweeps, the daily reconciliation scheduled): stopping must not wait them out.
    serve = await launch(_env(keyset, sims, db, port))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        [no] = await _create_all(http, base, ["order-idle"])
        await _pay(http, wechat, no)

        async def synced() -> bool:
            return (await _states(http, base, [no]))[no] == "synced"

        await _until(synced)
    code, elapsed = await serve.stop(within=10)
    measure("idle_stop_seconds", round(elapsed, 2))
    assert code == 0
    serve.assert_clean_stop()
    assert elapsed < 5, elapsed

    _assert_clean_database(db, no)


async def test_sigterm_during_a_slow_sweeper_pass_waits_out_the_sweeper_grace(
    tmp_path: pathlib.Path, keyset: KeySet, sims: Sims, launch: Callable[[dict[str, str]], Awaitable[Serve]],
    measure: Callable[[str, object], None],
) -> None:
    wechat, backend = sims
    faults = backend.app[backend_sim.FAULTS]
    # The backend answers nothing in time: every forward runs into PAYFLOW_BACKEND_TIMEOUT.
    faults.plan = BackendFaults(stall_rate=1.0, stall_seconds=5)
    port, db = unused_port(), tmp_path / "payflow.db"
    base = f"http://127.0.0.1:{port}"
    backend_timeout, wechat_timeout, count = 1.0, 1.5, 40
    env = _env(keyset, sims, db, port, PAYFLOW_BACKEND_TIMEOUT="1s", PAYFLOW_WECHAT_TIMEOUT="1500ms",
               PAYFLOW_LEASE="1s", PAYFLOW_RECONCILE_AT="off", PAYFLOW_FORWARD_SCHEDULE=",".join(["100ms"] * 30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        # Without a sweeper, the first forwards of 40 paid payments fail, or wait in the queue past their
        # 1 s lease and are left to a sweeper: either way they stay due, a backlog.
        first = await launch({**env, "PAYFLOW_SWEEP_INTERVAL": "0"})
        numbers = await _create_all(http, base, [f"order-{i:03d}" for i in range(count)])
        await asyncio.gather(*(_pay(http, wechat, no) for no in numbers))

        async def backlog() -> bool:
            return first.count("forward.failed") + first.count("forward.left_to_sweeper") >= count

        await _until(backlog)
        code, _ = await first.stop(within=30)
        assert code == 0

        # The next serve's first pass claims the whole backlog and works it 8 at a time, 1 s a round: 5 s.
        second = await launch({**env, "PAYFLOW_SWEEP_INTERVAL": "100ms"})
        before = faults.injected["stall"]

        async def first_round() -> bool:
            return faults.injected["stall"] >= before + 8

        await _until(first_round)
        at_sigterm = faults.injected["stall"]
        code, elapsed = await second.stop(within=30)
        started_after_sigterm = faults.injected["stall"] - at_sigterm
        stopping, swept = second.first("serve.stopping"), second.first("sweep.stopped")
        measure("slow_pass_stop_seconds", round(elapsed, 2))
        measure("forwards_started_after_sigterm", started_after_sigterm)
        measure("sweeper_finished_its_pass", swept is not None)
        assert stopping is not None
        assert code == 0
        second.assert_clean_stop()
        # What the code promises: the sweeper's grace (backend + WeChat timeout + 1 s), then drain's
        # (backend + 1 s). What a stop needs is one round of forwards in flight: `backend_timeout`.
        assert elapsed < (backend_timeout + wechat_timeout + 1) + (backend_timeout + 1) + 1, elapsed

        # Forwards the stop cancelled or never started are not lost: restarted with a healthy backend, all
        # are synced once their lease runs out.
        faults.plan = BackendFaults()
        third = await launch({**env, "PAYFLOW_SWEEP_INTERVAL": "100ms"})

        async def all_synced() -> bool:
            return set((await _states(http, base, numbers)).values()) == {"synced"}

        await _until(all_synced)
        assert all(backend.app[backend_sim.LEDGER].orders[f"order-{i:03d}"].status == "paid" for i in range(count))
        code, _ = await third.stop(within=30)
        assert code == 0
        third.assert_clean_stop()
