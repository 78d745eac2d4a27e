"""`run.py backup DEST`: a consistent copy of the SQLite store taken while `serve` keeps writing; for PostgreSQL,
a message naming pg_dump."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from payflow import devkeys
from payflow.devkeys import KeySet
from payflow.states import State
from payflow.store import open_store
from simulator.wechat.app import create_app as create_wechat_sim

ROOT = pathlib.Path(__file__).resolve().parents[2]
API = {"Authorization": "Bearer api-token"}


def _env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env["PAYFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'payflow.db'}"
    env.update(extra)
    return env


def _backup(env: dict[str, str], dest: pathlib.Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "run.py", "backup", str(dest)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
async def wechat(keyset: KeySet) -> AsyncIterator[TestServer]:
    server = TestServer(create_wechat_sim(keyset), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def serving(tmp_path: pathlib.Path, keyset: KeySet, wechat: TestServer) -> Iterator[str]:
    """`run.py serve` on a fresh SQLite store, placing orders at the WeChat simulator; its base URL. It logs to a
    file, not a pipe: nobody has to keep reading it for serve to go on."""
    env = _env(tmp_path)
    env.update(devkeys.env_lines(keyset, payflow_url="https://pay.example.com",
                                 wechat_url=str(wechat.make_url("")).rstrip("/"), backend_url="http://127.0.0.1:9/paid"))
    env.update(PAYFLOW_PORT="0", PAYFLOW_LOG_FORMAT="json", PAYFLOW_API_TOKEN="api-token",
               PAYFLOW_ADMIN_TOKEN="admin-token")
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "run.py", "serve"], cwd=ROOT, env=env, stderr=sink,
                                   stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        address = None
        while address is None and time.monotonic() < deadline and process.poll() is None:
            for line in log.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "serve.listening":
                    address = record["addresses"][0]
            time.sleep(0.05)
        assert address is not None, f"serve never reported its address:\n{log.read_text()}"
        yield f"http://{address}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _check_copy(copy: pathlib.Path) -> dict[str, str]:
    """A copy is one checked, private, self-contained file in which every transaction is whole; its payments."""
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not pathlib.Path(f"{copy}-wal").exists()
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        states = dict(db.execute("SELECT out_trade_no, state FROM payments").fetchall())
        # each payment's last event is its state: no transition is in the copy without its event, or the reverse
        last = dict(db.execute("SELECT out_trade_no, to_state FROM order_events WHERE id IN "
                               "(SELECT max(id) FROM order_events GROUP BY out_trade_no)").fetchall())
    assert last == states
    return states


async def test_a_backup_taken_while_serve_writes_is_consistent(tmp_path: pathlib.Path, serving: str) -> None:
    created: list[str] = []
    stop, enough = asyncio.Event(), asyncio.Event()

    async def payer(http: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            async with http.post(f"{serving}/v1/payments", headers=API, json={
                    "order_id": f"order-{worker}-{n}", "amount": 100 + n, "description": "Beans",
                    "openid": "oPayer"}) as response:
                assert response.status == 201, await response.text()
                created.append((await response.json())["out_trade_no"])
            if len(created) >= 20:
                enough.set()

    copies = [tmp_path / f"copy-{i}.db" for i in range(3)]
    before: list[int] = []
    async with aiohttp.ClientSession() as http:
        payers = [asyncio.create_task(payer(http, worker)) for worker in range(4)]
        try:
            await asyncio.wait_for(enough.wait(), 30)
            for copy in copies:
                before.append(len(created))
                result = await asyncio.to_thread(_backup, _env(tmp_path), copy)
                assert result.returncode == 0, result.stderr
                assert result.stdout.startswith(f"backed up {tmp_path / 'payflow.db'} to {copy}: ")
        finally:
            stop.set()
            await asyncio.gather(*payers)
    assert len(created) > before[-1]  # payers kept writing through every copy

    for copy, known in zip(copies, before, strict=True):
        states = _check_copy(copy)
        assert set(created[:known]) <= set(states) <= set(created)  # what was answered before the copy, at least
        assert set(states.values()) <= {State.CREATED.value, State.PREPAID.value}

    # recovery is copying it back and starting: payflow opens the copy as its store
    store = await open_store(f"sqlite:///{copies[-1]}")
    try:
        payment = await store.get(created[0])
        assert payment is not None and payment.state is State.PREPAID
    finally:
        await store.close()


def test_an_existing_copy_is_replaced_whole(tmp_path: pathlib.Path) -> None:
    async def make() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'payflow.db'}")
        await store.close()

    asyncio.run(make())
    dest = tmp_path / "payflow-backup.db"
    dest.write_bytes(b"yesterday's copy")
    result = _backup(_env(tmp_path), dest)
    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(dest)) as db:
        assert db.execute("SELECT count(*) FROM payments").fetchone() == (0,)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    assert _backup(_env(tmp_path), tmp_path / "payflow.db").returncode == 1  # not over the store itself
    assert _backup(_env(tmp_path), tmp_path).returncode == 1  # a directory is no file name


@pytest.mark.parametrize("url", ["postgresql://payflow@db.example.com:5432/payflow", "postgres://db/payflow"])
def test_a_postgresql_store_is_pointed_at_pg_dump(tmp_path: pathlib.Path, url: str) -> None:
    result = _backup(_env(tmp_path, PAYFLOW_DATABASE_URL=url), tmp_path / "copy.db")
    assert result.returncode == 2
    assert "pg_dump" in result.stderr and "PITR" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "copy.db").exists()


def test_no_store_is_an_error_that_creates_nothing(tmp_path: pathlib.Path) -> None:
    result = _backup(_env(tmp_path), tmp_path / "copy.db")
    assert result.returncode == 2 and "no SQLite store" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "payflow.db").write_bytes(b"")  # a file, but no payflow store
    result = _backup(_env(tmp_path), tmp_path / "copy.db")
    assert result.returncode == 1 and "is not a payflow store" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payflow.db"]
