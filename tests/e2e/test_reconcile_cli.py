"""`run.py reconcile --date`: a table or JSON, and exit 0 clean / 1 discrepancies / 2 errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pathlib
import sys

from payflow import devkeys
from tests.e2e.conftest import World
from tests.e2e.test_reconcile import _paid_and_synced, _today

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def _reconcile(world: World, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
        env.update(devkeys.env_lines(world.keys, payflow_url="http://127.0.0.1:9",
                                     wechat_url=world.settings.wechat_base_url,
                                     backend_url=world.settings.backend_url or ""))
        env["PAYFLOW_DATABASE_URL"] = world.settings.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "reconcile", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _real_time(world: World) -> None:
    """The subprocess signs with the real clock; WeChat (the simulator) must agree within 300 s."""
    world.clock.set(dt.datetime.now(dt.UTC))


async def test_clean_day_exits_0(world: World) -> None:
    _real_time(world)
    no = await _paid_and_synced(world, "order-1")
    code, out, err = await _reconcile(world, "--date", _today(world).isoformat())
    assert code == 0, err
    assert "clean" in out and "reconciled=1" in out
    assert (await world.payment(no)).state.value == "reconciled"


async def test_discrepancies_exit_1_with_a_table_and_json(world: World) -> None:
    _real_time(world)
    async with world.http.post(world.wechat.make_url("/sim/v1/transactions"),
                               json={"out_trade_no": "FOREIGN0003", "amount": 300, "paid": True}) as response:
        assert response.status == 201
    code, out, _ = await _reconcile(world, "--date", _today(world).isoformat())
    assert code == 1 and "PLATFORM_MISS" in out and "FOREIGN0003" in out
    code, out, _ = await _reconcile(world, "--date", _today(world).isoformat(), "--json")
    report = json.loads(out)
    assert code == 1 and [d["category"] for d in report["discrepancies"]] == ["PLATFORM_MISS"]
    assert report["run"]["status"] == "discrepancies"


async def test_errors_exit_2(world: World) -> None:
    _real_time(world)
    code, _, err = await _reconcile(world, "--date", "2026-13-40")
    assert code == 2 and "YYYY-MM-DD" in err and "Traceback" not in err
    code, _, err = await _reconcile(world, "--date", "2026-11-26",
                                    env={k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")})
    assert code == 2 and "PAYFLOW_WECHAT_MCHID" in err
    # a future day has no bill: WeChat refuses, the run is recorded as failed
    code, _, err = await _reconcile(world, "--date", "2099-01-01")
    assert code == 2 and "failed" in err and "Traceback" not in err
