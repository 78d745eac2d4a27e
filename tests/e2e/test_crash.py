"""A real payflow process, SIGKILLed after acknowledging a notification but before its forward
finished, loses nothing: restarted on the same database, its sweeper forwards once the lease ends."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from payflow import devkeys
from payflow.devkeys import KeySet
from simulator import backend as backend_sim
from simulator.backend.faults import BackendFaults
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.appkeys import LEDGER, NOTIFIER

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def spawn(tmp_path: pathlib.Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[str]]]:
    """Starts `run.py serve` processes; every one is killed at the end, also when the test fails."""
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "run.py", "serve"], cwd=ROOT, env=env,
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        started.append(process)
        assert process.stderr is not None
        for line in process.stderr:
            if json.loads(line).get("event") == "serve.listening":
                return process
        raise AssertionError(f"payflow exited with {process.wait()} before listening")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


@pytest.fixture
async def sims(keyset: KeySet) -> AsyncIterator[tuple[TestServer, TestServer]]:
    wechat = TestServer(create_wechat_sim(keyset, time_factor=100.0), host="127.0.0.1")
    backend = TestServer(backend_sim.create_app(keyset.backend_secret), host="127.0.0.1")
    await wechat.start_server()
    await backend.start_server()
    yield wechat, backend
    await backend.close()
    await wechat.close()


async def _until(check: Callable[[], object]) -> None:
    """Real processes take real time: poll (briefly, for at most 20 s) until `check()` holds."""
    async with asyncio.timeout(20):
        while not await check():  # type: ignore[misc]  # noqa: ASYNC110 (state lives in another process)
            await asyncio.sleep(0.05)


async def test_sigkill_after_ack_before_forward(
    tmp_path: pathlib.Path, keyset: KeySet, sims: tuple[TestServer, TestServer],
    spawn: Callable[[dict[str, str]], subprocess.Popen[str]],
) -> None:
    wechat, backend = sims
    port = unused_port()
    env = _serve_env(tmp_path, keyset, wechat, backend, port)
    # The backend holds every event without answering: the first forward is in flight when we kill.
    backend.app[backend_sim.FAULTS].plan = BackendFaults(stall_rate=1.0, stall_seconds=60)
    first = spawn(env)
    api = {"Authorization": "Bearer api"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/payments", headers=api, json={
                "order_id": "order-1", "amount": 1999, "description": "Beans", "openid": "oPayer"}) as response:
            assert response.status == 201
            no = (await response.json())["out_trade_no"]
        async with http.post(wechat.make_url(f"/sim/v1/transactions/{no}/pay")) as response:
            assert response.status == 200

        async def acked() -> bool:
            stats = wechat.app[NOTIFIER].get(no)
            return stats is not None and stats.stats.acked >= 1

        await _until(acked)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        assert backend.app[backend_sim.LEDGER].orders.get("order-1") is None  # nothing reached the backend

        backend.app[backend_sim.FAULTS].plan = BackendFaults()  # the backend recovers
        spawn(env)

        async def synced() -> bool:
            async with http.get(f"http://127.0.0.1:{port}/v1/payments/{no}", headers=api) as response:
                return (await response.json())["state"] == "synced"

        await _until(synced)
    order = backend.app[backend_sim.LEDGER].orders["order-1"]
    assert order.status == "paid" and order.paid_amount == 1999
    assert wechat.app[LEDGER].get(no, dt.datetime.now(dt.UTC)).state == "SUCCESS"


def _serve_env(tmp_path: pathlib.Path, keyset: KeySet, wechat: TestServer, backend: TestServer,
               port: int) -> dict[str, str]:
    """`serve` on loopback against both simulators, with a one-second lease and a fast sweeper."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env.update(devkeys.env_lines(keyset, payflow_url=f"http://127.0.0.1:{port}",
                                 wechat_url=str(wechat.make_url("")).rstrip("/"),
                                 backend_url=str(backend.make_url(devkeys.BACKEND_SIM_PATH))))
    env.update(PAYFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'payflow.db'}", PAYFLOW_PORT=str(port),
               PAYFLOW_API_TOKEN="api", PAYFLOW_ADMIN_TOKEN="admin", PAYFLOW_LOG_FORMAT="json",
               PAYFLOW_LEASE="1s", PAYFLOW_SWEEP_INTERVAL="100ms", PAYFLOW_BACKEND_TIMEOUT="30s",
               PAYFLOW_REFUND_QUERY_SCHEDULE="1s", PAYFLOW_WECHAT_TIMEOUT="30s")
    return env


def _refund_state(tmp_path: pathlib.Path, out_refund_no: str) -> str | None:
    """The refund's state as the killed process left it on disk (read-only, beside any writer)."""
    import sqlite3

    db = sqlite3.connect(f"file:{tmp_path / 'payflow.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT state FROM refunds WHERE out_refund_no = ?", (out_refund_no,)).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        db.close()
    return rows[0][0] if rows else None


async def _paid_payment(http: aiohttp.ClientSession, port: int, wechat: TestServer) -> str:
    api = {"Authorization": "Bearer api"}
    async with http.post(f"http://127.0.0.1:{port}/v1/payments", headers=api, json={
            "order_id": "order-1", "amount": 1999, "description": "Beans", "openid": "oPayer"}) as response:
        assert response.status == 201
        no = str((await response.json())["out_trade_no"])
    async with http.post(wechat.make_url(f"/sim/v1/transactions/{no}/pay")) as response:
        assert response.status == 200

    async def synced() -> bool:
        async with http.get(f"http://127.0.0.1:{port}/v1/payments/{no}", headers=api) as response:
            return (await response.json())["state"] == "synced"

    await _until(synced)
    return no


async def _refund_synced(http: aiohttp.ClientSession, port: int, out_refund_no: str) -> None:
    async def synced() -> bool:
        async with http.get(f"http://127.0.0.1:{port}/v1/refunds/{out_refund_no}",
                            headers={"Authorization": "Bearer api"}) as response:
            return response.status == 200 and (await response.json())["state"] == "synced"

    await _until(synced)


async def test_sigkill_after_a_refund_is_stored_before_wechat_accepted_it(
    tmp_path: pathlib.Path, keyset: KeySet, sims: tuple[TestServer, TestServer],
    spawn: Callable[[dict[str, str]], subprocess.Popen[str]],
) -> None:
    from simulator.wechat.appkeys import FAULTS as WECHAT_FAULTS
    from simulator.wechat.faults import WechatFaults

    wechat, backend = sims
    port = unused_port()
    env = _serve_env(tmp_path, keyset, wechat, backend, port)
    first = spawn(env)
    async with aiohttp.ClientSession() as http:
        no = await _paid_payment(http, port, wechat)
        # WeChat takes its time answering: the refund is stored and its request in flight when we kill.
        wechat.app[WECHAT_FAULTS].plan = WechatFaults(api_latency_min=1.5, api_latency_max=1.5)
        request = asyncio.create_task(http.post(
            f"http://127.0.0.1:{port}/v1/payments/{no}/refunds", headers={"Authorization": "Bearer api"},
            json={"amount": 1999, "out_refund_no": "R-crash-1"}))

        async def stored() -> bool:
            return _refund_state(tmp_path, "R-crash-1") == "created"

        await _until(stored)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        with pytest.raises(aiohttp.ClientError):
            await request
        wechat.app[WECHAT_FAULTS].plan = WechatFaults()
        spawn(env)  # the sweeper re-submits the identical request once the lease ends
        await _refund_synced(http, port, "R-crash-1")
    order = wechat.app[LEDGER].get(no, dt.datetime.now(dt.UTC))
    assert [r.out_refund_no for r in order.refunds] == ["R-crash-1"] and order.refunded_amount == 1999
    assert backend.app[backend_sim.LEDGER].orders["order-1"].refunds == {"R-crash-1": 1999}


async def test_sigkill_after_a_refund_succeeded_before_it_was_forwarded(
    tmp_path: pathlib.Path, keyset: KeySet, sims: tuple[TestServer, TestServer],
    spawn: Callable[[dict[str, str]], subprocess.Popen[str]],
) -> None:
    wechat, backend = sims
    port = unused_port()
    env = _serve_env(tmp_path, keyset, wechat, backend, port)
    first = spawn(env)
    async with aiohttp.ClientSession() as http:
        no = await _paid_payment(http, port, wechat)
        # The backend holds every event without answering: refund.succeeded is in flight when we kill.
        backend.app[backend_sim.FAULTS].plan = BackendFaults(stall_rate=1.0, stall_seconds=60)
        async with http.post(f"http://127.0.0.1:{port}/v1/payments/{no}/refunds",
                             headers={"Authorization": "Bearer api"},
                             json={"amount": 1999, "out_refund_no": "R-crash-2"}) as response:
            assert response.status == 201

        async def succeeded() -> bool:
            return _refund_state(tmp_path, "R-crash-2") == "succeeded"

        await _until(succeeded)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        assert backend.app[backend_sim.LEDGER].orders["order-1"].refunds == {}  # nothing reached the backend
        backend.app[backend_sim.FAULTS].plan = BackendFaults()
        spawn(env)
        await _refund_synced(http, port, "R-crash-2")
        async with http.get(f"http://127.0.0.1:{port}/v1/payments/{no}",
                            headers={"Authorization": "Bearer api"}) as response:
            view = await response.json()
    assert view["state"] == "refunded" and view["refunded_amount"] == 1999
    assert backend.app[backend_sim.LEDGER].orders["order-1"].refunds == {"R-crash-2": 1999}
