"""The main job, small and seeded: payflow survives faults and SIGKILLs with every invariant intact;
the seed's naive design, on the very same scenario, loses paid orders."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

from tests import postgres_server

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def _chaos(tmp: pathlib.Path, name: str, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp / f"{name}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "simulate-chaos", "--orders", "50", "--seed", "7", *args,
        "--json", str(out), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")},
        start_new_session=True)  # its own process group: payflow children die with it on failure
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), 240)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert out.exists(), stdout.decode()
    return process.returncode, json.loads(out.read_text())


async def test_small_seeded_chaos_run(tmp_path: pathlib.Path, postgres: postgres_server.Server) -> None:
    restart = ("--db-restart-command", postgres.restart_command) if postgres.restart_command else ()
    # Three scenarios at once (the run time is mostly WeChat's one-minute minimum order lifetime).
    (code, report), (naive_code, naive), (replicas_code, replicas) = await asyncio.gather(
        _chaos(tmp_path, "payflow"),
        _chaos(tmp_path, "naive", "--strategy", "naive"),
        _chaos(tmp_path, "replicas", "--replicas", "3", "--crashes", "3", "--database", postgres.url, "--db-restart",
               *restart))
    failures = {i["name"]: i["failures"][:5] for i in report["invariants"] if not i["holds"]}
    assert code == 0 and report["ok"], (failures, report["summary"]["reconcile_runs"])
    assert [i["name"] for i in report["invariants"]] == ["I1", "I2", "I3", "I4", "I5", "I6", "R1", "R2", "R3", "R4"]
    summary = report["summary"]
    _assert_refunds(summary)
    assert summary["crashes"] >= 1 and summary["payflow_exit_on_sigterm"] == 0
    assert summary["paid_at_wechat_not_at_backend"] == 0 and summary["paid_at_backend"] > 0
    assert sum(summary["faults"]["backend"].values()) > 0 and summary["faults"]["wechat_notifications"]["dropped"] > 0
    assert len(report["orders"]) == 50
    placement = summary["placement"]  # every payer is served in the end, most on the first try
    assert placement["served"] == 50 and placement["first_outcomes"].get("ok") == placement["first_try"]
    assert sum(placement["first_outcomes"].values()) == 50 and placement["first_try_ms"]["n"] == placement["first_try"]
    assert report["summary"]["reconcile_runs"][-1]["exit"] in (0, 1)  # the last pass reconciled its day
    # The same scenario under the seed's design: forwarded once, nothing re-drives it.
    assert naive_code == 1 and not naive["ok"]
    assert naive["summary"]["paid_at_wechat_not_at_backend"] > 0
    # Three replicas on PostgreSQL behind a proxy, three of them SIGKILLed, the database restarted once.
    failures = {i["name"]: i["failures"][:5] for i in replicas["invariants"] if not i["holds"]}
    assert replicas_code == 0 and replicas["ok"], (failures, replicas["summary"]["reconcile_runs"])
    summary = replicas["summary"]
    assert summary["replicas"] == 3 and summary["database"] == "postgresql"
    assert summary["crashes"] == 3 and summary["db_restarts"] == 1
    assert summary["paid_at_wechat_not_at_backend"] == 0
    _assert_refunds(summary)


def _assert_refunds(summary: dict) -> None:  # type: ignore[type-arg]
    """Refunds through payflow (full and partial), automatic ones for the orders the backend cancelled, and the one
    made outside payflow, which reconciliation reports; every payment closed at WeChat was told to the backend."""
    refunds = summary["refunds"]
    assert refunds["requested"] > 0 and refunds["full"] > 0 and refunds["partial"] > 0
    assert refunds["request_results"] == {"ok": refunds["requested"]}
    assert 0 < refunds["automatic"] <= summary["scenario"]["cancelled"]
    assert refunds["outside"] == 1 and summary["discrepancies"].get("REFUND_UNKNOWN") == 1
    assert refunds["reached_backend"] == refunds["succeeded_for_payflow"] > 0
    assert refunds["succeeded_at_wechat"] == refunds["succeeded_for_payflow"] + 1
    assert summary["payflow_states"].get("refunded", 0) == refunds["payments_refunded_in_full"] > 0
    assert summary["closed_events_at_backend"] >= summary["closed_at_wechat"] > 0  # R4 checks each of them
