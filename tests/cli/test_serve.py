"""`run.py serve` as a real process: configuration errors, start, answer, stop on a signal."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from payflow import devkeys
from payflow.settings import REQUIRED_FOR_SERVE

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _base_env(tmp_path: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env["PAYFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
    return env


def _full_env(tmp_path: pathlib.Path) -> dict[str, str]:
    keys = devkeys.write_keyset(tmp_path / "keys")
    return {
        **_base_env(tmp_path),
        **devkeys.env_lines(keys, payflow_url="https://pay.example.com", wechat_url="http://127.0.0.1:9",
                            backend_url="http://127.0.0.1:9/paid"),
        "PAYFLOW_PORT": "0",
        "PAYFLOW_LOG_FORMAT": "json",
        "PAYFLOW_API_TOKEN": "api-token",
        "PAYFLOW_ADMIN_TOKEN": "admin-token",
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "run.py", "serve", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_missing_settings_exit_2_naming_every_variable(tmp_path: pathlib.Path) -> None:
    result = _run(_base_env(tmp_path))
    assert result.returncode == 2
    for name in REQUIRED_FOR_SERVE:
        assert name in result.stderr
    assert "Traceback" not in result.stderr and "serve --dev" in result.stderr
    assert not (tmp_path / "serve.db").exists()  # nothing was started


def test_a_bad_value_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    result = _run({**_full_env(tmp_path), "PAYFLOW_QUERY_SCHEDULE": "30s,later"})
    assert result.returncode == 2 and "PAYFLOW_QUERY_SCHEDULE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_key_file_is_named(tmp_path: pathlib.Path) -> None:
    result = _run({**_full_env(tmp_path), "PAYFLOW_WECHAT_PUBKEY_FILE": str(tmp_path / "nope.pem")})
    assert result.returncode == 2 and "PAYFLOW_WECHAT_PUBKEY_FILE" in result.stderr


def test_an_unreadable_key_is_named(tmp_path: pathlib.Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    result = _run({**_full_env(tmp_path), "PAYFLOW_WECHAT_MCH_KEY_FILE": str(tmp_path / "junk.pem")})
    assert result.returncode == 2 and "PAYFLOW_WECHAT_MCH_KEY_FILE" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def serving(tmp_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen([sys.executable, "run.py", "serve", "--host", "127.0.0.1"], cwd=ROOT,
                               env=_full_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in process.stderr:  # type: ignore[union-attr]
            record = json.loads(line)
            if record.get("event") == "serve.listening":
                address = record["addresses"][0]
                break
        assert address is not None, "serve never reported its address"
        yield process, f"http://{address}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serves_and_stops_cleanly_on_signal(serving: tuple[subprocess.Popen[str], str], signum: int) -> None:
    process, base = serving
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with session.get(f"{base}/v1/payments/ABCDEF1234",
                               headers={"Authorization": "Bearer api-token"}) as response:
            assert response.status == 404
    process.send_signal(signum)
    assert await asyncio.to_thread(process.wait, 20) == 0
    rest = process.stderr.read()  # type: ignore[union-attr]
    assert '"serve.stopped"' in rest and "Traceback" not in rest
