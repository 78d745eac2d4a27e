"""No secret reaches a log line, a command's message or an answer: `run.py serve` against PostgreSQL with a
password in its URL, and the commands that fail on bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from payflow import devkeys
from tests import postgres_server

ROOT = pathlib.Path(__file__).resolve().parents[2]

DB_PASSWORD = "pg-Secret-7f3a9c1e"  # trust auth: PostgreSQL accepts any password
API_TOKEN = "api-Secret-4d2b8e6f"
ADMIN_TOKEN = "admin-Secret-9a5c3f7d"


def _with_password(url: str, password: str, *, in_query: bool = False) -> str:
    parts = urllib.parse.urlsplit(url)
    if in_query:
        query = "&".join(q for q in (parts.query, f"password={password}") if q)
        return urllib.parse.urlunsplit(parts._replace(query=query))
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def _address(url: str) -> str:
    """host:port of a URL, as the redacted URL in a log line shows it."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def _secrets(keyset: devkeys.KeySet) -> dict[str, str]:
    return {"database password": DB_PASSWORD, "api token": API_TOKEN, "admin token": ADMIN_TOKEN,
            "APIv3 key": keyset.apiv3_key, "backend secret": keyset.backend_secret}


def _assert_no_secret(text: str, keyset: devkeys.KeySet) -> None:
    for what, secret in _secrets(keyset).items():
        assert secret not in text, f"the {what} leaked:\n{text}"


def _env(keyset: devkeys.KeySet, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    return {
        **env,
        **devkeys.env_lines(keyset, payflow_url="https://pay.example.com", wechat_url="http://127.0.0.1:9",
                            backend_url="http://127.0.0.1:9/paid"),
        "PAYFLOW_DATABASE_URL": database_url,
        "PAYFLOW_HOST": "127.0.0.1",
        "PAYFLOW_PORT": "0",
        "PAYFLOW_LOG_FORMAT": "json",
        "PAYFLOW_SWEEP_INTERVAL": "0",
        "PAYFLOW_API_TOKEN": API_TOKEN,
        "PAYFLOW_ADMIN_TOKEN": ADMIN_TOKEN,
    }


@contextlib.asynccontextmanager
async def _process(env: dict[str, str], *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`run.py ARGS` in its own session; killed with its whole group however the test ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", *args, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    async with _process(env, *args) as process:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, stdout.decode() + stderr.decode()


async def _execute(url: str, sql: str) -> None:
    # A connection per statement: one held across the test dies with any restart of the shared PostgreSQL.
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
async def schema(postgres: postgres_server.Server) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _execute(postgres.url, f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        await _execute(postgres.url, f"DROP SCHEMA {name} CASCADE")


@pytest.mark.parametrize("in_query", [False, True], ids=["userinfo", "query"])
async def test_serve_logs_and_answers_carry_no_secret(keyset: devkeys.KeySet, postgres: postgres_server.Server,
                                                     schema: str, in_query: bool) -> None:
    url = _with_password(f"{postgres.url}?search_path={schema}", DB_PASSWORD, in_query=in_query)
    seen: list[str] = []
    async with _process(_env(keyset, url), "serve") as process:
        assert process.stderr is not None and process.stdout is not None
        listening = None
        while listening is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, f"serve exited before listening:\n{''.join(seen)}"
            seen.append(line)
            record = json.loads(line)
            if record.get("event") == "serve.listening":
                listening = record
        assert "***" in listening["database"] and _address(postgres.url) in listening["database"]
        base = f"http://{listening['addresses'][0]}"
        calls = [("GET", "/readyz", None, None), ("GET", "/healthz", None, None), ("GET", "/metrics", None, None),
                 ("GET", "/v1/payments/NOPE000001", API_TOKEN, None),
                 ("GET", "/v1/payments/NOPE000001", "wrong-token", None),
                 ("GET", "/v1/admin/payments?state=nonsense", ADMIN_TOKEN, None),
                 ("POST", "/v1/payments", API_TOKEN, b'{"order_id": 1}'),
                 ("POST", "/v1/wechat/notify", None, b'{"id": "EV-1"}')]
        async with aiohttp.ClientSession() as session:
            for method, path, token, body in calls:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.request(method, base + path, data=body, headers=headers) as response:
                    seen.append(f"{method} {path} → {response.status} {response.headers} {await response.text()}\n")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0
        seen.append(stdout.decode() + stderr.decode())
    text = "".join(seen)
    assert '"serve.stopped"' in text and " → 401 " in text and " → 404 " in text
    _assert_no_secret(text, keyset)


async def test_failing_commands_name_the_database_without_its_password(
    keyset: devkeys.KeySet, postgres: postgres_server.Server, schema: str
) -> None:
    # Its own schema: the shared database's `public` may hold another payflow version's tables.
    with_password = _with_password(f"{postgres.url}?search_path={schema}", DB_PASSWORD)
    unreachable = f"postgresql://payflow:{DB_PASSWORD}@127.0.0.1:1/payflow"
    runs = [
        (f"mysql://payflow:{DB_PASSWORD}@db.internal/payflow", ("serve",), 2),
        (f"mysql://db.internal/payflow?password={DB_PASSWORD}", ("serve",), 2),
        (unreachable, ("serve",), 1),
        (f"mysql://payflow:{DB_PASSWORD}@db.internal/payflow", ("inspect", "NOPE000001"), 2),
        (with_password, ("inspect", "NOPE000001"), 2),
        (unreachable, ("inspect", "NOPE000001"), 2),
        (f"mysql://payflow:{DB_PASSWORD}@db.internal/payflow", ("reconcile", "--date", "2026-01-01"), 2),
        (f"postgresql://payflow:{DB_PASSWORD}@127.0.0.1:notaport/payflow", ("serve",), 2),  # the driver's ValueError
        (f"postgresql://payflow:{DB_PASSWORD}@[::1/payflow", ("inspect", "NOPE000001"), 2),
    ]
    outputs = []
    for url, args, status in runs:
        code, output = await _run(_env(keyset, url), *args)
        assert code == status, output
        assert "Traceback" not in output, output
        _assert_no_secret(output, keyset)
        outputs.append(output)
    assert all("PAYFLOW_DATABASE_URL" in outputs[i] for i in (0, 1, 3, 6, 7, 8))
    parts = urllib.parse.urlsplit(postgres.url)  # it still says which database it looked in:
    assert f"{parts.username or 'postgres'}:***@{_address(postgres.url)}{parts.path}" in outputs[4]
